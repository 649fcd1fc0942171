"""The deploy lock: one operation at a time moves the fleet.

A hash {holder, token} with a TTL in Redis, taken by a Lua script. It is
renewed by a background thread while held, so a holder that dies frees it
within one TTL. The steps inside one operation pass its Hold: a rollout's own
prune never waits on itself. Holding is checked where it matters, in Redis:
every release change carries the token and its script refuses it once the
lock is someone else's (lua/common.lua, fence). A renewal that fails marks the
Hold lost, and the operation stops at its next step (Hold.check).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources

import redis

from ..errors import LockHeld, LockLost, StoreUnavailable
from ..protocol import CHANGES_LENGTH, Keys
from .store import who

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0


def default_holder(operation: str) -> str:
    """Who holds the lock, in words an operator can act on."""
    return f"{operation} by {who()} pid {os.getpid()}"


def _why_lost(refused: list[object]) -> str:
    """Why a renewal was refused, from lock.lua's {0, holder, pttl}."""
    return f"it is now held by {refused[1]}" if refused[1] else "it expired or was broken and is free"


@dataclass
class Hold:
    """The deploy lock as one operation holds it: the token its release changes carry, and whether it was lost."""

    token: str
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)
    why: str = ""

    def lose(self, why: str) -> None:
        self.why = why
        self.lost.set()

    def check(self) -> None:
        """Raise LockLost once the renewer found the lock gone: the operation stops before its next step."""
        if self.lost.is_set():
            raise LockLost(self.why)


@dataclass(frozen=True)
class LockInfo:
    holder: str
    expires_in: float  # seconds; -1 when nobody holds the lock


class DeployLock:
    """Acquire, renew, release and force the deploy lock of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        keys = Keys(namespace)
        self.key, self.changes = keys.lock, keys.changes
        self.ttl = ttl
        self._script = client.register_script(resources.files(__package__).joinpath("lua/lock.lua").read_text())

    def _call(self, op: str, token: str, holder: str = "") -> list[object]:
        try:
            result = self._script(keys=[self.key, self.changes],
                                  args=[op, token, holder, int(self.ttl * 1000), who(), CHANGES_LENGTH])
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

    def confirm(self, hold: Hold) -> None:
        """Check in Redis that hold is still the lock's (and renew it); LockLost if not. For a step that acts
        outside Redis, where no script can check the token: prune, before each host."""
        hold.check()
        result = self._call("renew", hold.token)
        if result[0] != 1:
            hold.lose(_why_lost(result))
            hold.check()

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
    def held(self, holder: str, hold: Hold | None = None, wait: float = 0.0, force: bool = False) -> Iterator[Hold]:
        """Hold the lock for a block, renewed every third of its TTL; released on the way out.

        With a hold (a step of an operation that holds it), the operation keeps renewing and releasing it.
        """
        if hold is not None:
            hold.check()
            yield hold
            return
        token = self.force(holder)[0] if force else self.acquire(holder, None, wait)
        hold = Hold(token, holder)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(hold, stop), name="deploy-lock", daemon=True)
        renewer.start()
        try:
            yield hold
        finally:
            stop.set()
            renewer.join()
            if not hold.lost.is_set():
                try:
                    self.release(token)
                except StoreUnavailable as err:
                    log.warning("could not release the deploy lock (it expires in %.0fs): %s", self.ttl, err)

    def _renew_until(self, hold: Hold, stop: threading.Event) -> None:
        """Renew every third of the TTL; mark the hold lost when the lock is another's, or when no renewal got
        through for a whole TTL (it has expired by then, and someone else may hold it)."""
        renewed = time.monotonic()
        while not stop.wait(self.ttl / 3):
            try:
                result = self._call("renew", hold.token)
            except StoreUnavailable as err:
                if time.monotonic() - renewed >= self.ttl:
                    hold.lose(f"no renewal reached Redis for {self.ttl:.0f}s, so it expired: {err}")
                    log.error("lost the deploy lock: %s", hold.why)
                    return
                log.warning("could not renew the deploy lock: %s", err)
                continue
            if result[0] != 1:
                hold.lose(_why_lost(result))
                log.error("lost the deploy lock: %s", hold.why)
                return
            renewed = time.monotonic()
