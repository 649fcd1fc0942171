"""The deploy lock: one operation at a time moves the fleet.

A hash {holder, token} with a TTL in Redis, taken by a Lua script. It is
renewed by a background thread while held, so a holder that dies frees it
within one TTL. The steps inside one operation pass its token: acquiring
again with the same token succeeds (re-entrant), so a rollout's own
automatic rollback never waits on itself.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import redis

from ..errors import LockHeld, StoreUnavailable
from ..protocol import Keys

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0


def default_holder(operation: str) -> str:
    """Who holds the lock, in words an operator can act on."""
    return f"{operation} by {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class LockInfo:
    holder: str
    expires_in: float  # seconds; -1 when nobody holds the lock


class DeployLock:
    """Acquire, renew, release and force the deploy lock of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self.key = Keys(namespace).lock
        self.ttl = ttl
        self._script = client.register_script(resources.files(__package__).joinpath("lua/lock.lua").read_text())

    def _call(self, op: str, token: str, holder: str = "") -> list[object]:
        try:
            result = self._script(keys=[self.key], args=[op, token, holder, int(self.ttl * 1000)])
        except redis.RedisError as err:
            raise StoreUnavailable(f"cannot reach Redis for the deploy lock: {err}") from err
        return list(result)

    def acquire(self, holder: str, token: str | None = None, wait: float = 0.0) -> str:
        """Take the lock (or re-enter it with token); wait up to `wait` seconds for another holder."""
        token = token or uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while True:
            result = self._call("acquire", token, holder)
            if result[0] == 1:
                return token
            if time.monotonic() >= deadline:
                raise LockHeld(str(result[1]), int(str(result[2])) / 1000)
            time.sleep(0.2)

    def renew(self, token: str) -> bool:
        return self._call("renew", token)[0] == 1

    def release(self, token: str) -> bool:
        return self._call("release", token)[0] == 1

    def force(self, holder: str) -> tuple[str, str]:
        """Break whatever lock there is and take it; returns (token, previous holder or "")."""
        token = uuid.uuid4().hex
        result = self._call("force", token, holder)
        previous = str(result[1])
        if previous:
            log.warning("broke the deploy lock held by %s", previous)
        return token, previous

    def break_lock(self, holder: str) -> str:
        """Break a (dead holder's) lock and leave it free; returns who held it, "" when it was free."""
        token, previous = self.force(holder)
        self.release(token)
        return previous

    def info(self) -> LockInfo:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self.key, "holder")
            pipe.pttl(self.key)
            holder, pttl = pipe.execute()
        except redis.RedisError as err:
            raise StoreUnavailable(f"cannot reach Redis for the deploy lock: {err}") from err
        if holder is None:
            return LockInfo("", -1)
        text = holder.decode() if isinstance(holder, bytes) else str(holder)
        return LockInfo(text, max(int(pttl), 0) / 1000)

    @contextmanager
    def held(self, holder: str, token: str | None = None, wait: float = 0.0, force: bool = False) -> Iterator[str]:
        """Hold the lock for a block, renewed every third of its TTL; released on the way out.

        With a token (re-entry), the outer holder keeps renewing and releasing it.
        """
        reentered = token is not None
        if force and not reentered:
            token, _ = self.force(holder)
        else:
            token = self.acquire(holder, token, wait)
        if reentered:
            yield token
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(token, stop), name="deploy-lock", daemon=True)
        renewer.start()
        try:
            yield token
        finally:
            stop.set()
            renewer.join()
            try:
                self.release(token)
            except StoreUnavailable as err:
                log.warning("could not release the deploy lock (it expires in %.0fs): %s", self.ttl, err)

    def _renew_until(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                if not self.renew(token):
                    log.warning("lost the deploy lock: someone broke it with --force")
                    return
            except StoreUnavailable as err:
                log.warning("could not renew the deploy lock: %s", err)
