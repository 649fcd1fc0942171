"""The publisher's side of the store: every change is one Lua script (EVAL/EVALSHA).

A script stores the change, moves the change chain on by one (revision, head,
log; docs/protocol.md "The change chain"), and publishes the event with its
payload, atomically, so agents apply it without a round trip and no two
publishers can interleave. A change is refused on a store without an epoch:
only `seed` makes one (`init`, an import onto an empty store, `recover`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import redis

from ..errors import (
    FrontfleetError,
    ProtocolError,
    StoreEmpty,
    StoreExists,
    StoreForeign,
    StoreUnavailable,
    UsageError,
)
from ..protocol import (
    LOG_LENGTH,
    MAX_DATA_BYTES,
    MAX_DATA_KEYS,
    Desired,
    Keys,
    load_json,
    new_change_id,
    validate_data_key,
    validate_host,
    validate_json_value,
    validate_release_id,
)
from ..snapshot import Point, Snapshot, parse_snapshot, queue_snapshot

log = logging.getLogger(__name__)

URL_ENV = "FRONTFLEET_REDIS_URL"
SWITCH_MARGIN_MS = 50  # release events' switch_at = Redis TIME + this: above the p99 delivery to every agent
PASSWORD_FILE_ENV = "FRONTFLEET_REDIS_PASSWORD_FILE"


def _script(name: str) -> str:
    prelude = resources.files(__package__).joinpath("lua/common.lua").read_text()
    return prelude + "\n" + resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


def read_password(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise UsageError(f"cannot read the Redis password file {path}: {err.strerror}") from err


def connect(url: str | None = None, password_file: str | None = None, username: str | None = None) -> redis.Redis:
    """A client for the control plane: --redis URL or $FRONTFLEET_REDIS_URL, password from a file."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise UsageError(f"no Redis to talk to: pass --redis redis://publisher@HOST:PORT or set {URL_ENV}")
    password_file = password_file or os.environ.get(PASSWORD_FILE_ENV)
    extra: dict[str, Any] = {}
    if password_file:
        extra["password"] = read_password(password_file)
    if username:
        extra["username"] = username
    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, **extra)
    except ValueError as err:
        raise UsageError(f"bad Redis URL {url!r}: {err}") from err
    return client


def who_and_when() -> dict[str, str]:
    return {"who": f"{getpass.getuser()}@{socket.gethostname()}",
            "when": datetime.now(UTC).isoformat(timespec="seconds")}


def release_metadata(label: str, **extra: Any) -> dict[str, Any]:
    """What `release list` and `fab releases` show: label, who published it, when (UTC)."""
    return {"label": label, **who_and_when(), **extra}


def _stored_value(key: str, raw: str) -> Any:
    """A stored value as agents read it; one they refuse (written around the publisher) is named, not a traceback."""
    try:
        return load_json(raw)
    except ProtocolError as err:
        raise FrontfleetError(f"data key {key!r} holds a value agents refuse ({err}); set it again or delete it "
                              "(data del)") from err


@dataclass(frozen=True)
class Change:
    """What a publish did: the store's epoch, the revision it got and its id ("" when nothing changed)."""

    epoch: str
    revision: int
    id: str = ""


ORIGINS = ("init", "import", "recover")


@dataclass(frozen=True)
class History:
    releases: list[str]
    position: int  # index of the fleet's current release, -1 when there is none

    @property
    def current(self) -> str | None:
        return self.releases[self.position] if self.position >= 0 else None

    @property
    def rollback_target(self) -> str | None:
        """The release `rollback` would go to next."""
        return self.releases[self.position - 1] if self.position >= 1 else None


class Store:
    """Publisher operations on one namespace. Every method is one round trip or one script."""

    def __init__(self, client: redis.Redis, namespace: str, switch_margin_ms: int = SWITCH_MARGIN_MS) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.switch_margin_ms = switch_margin_ms
        self._data_script = client.register_script(_script("data"))
        self._release_script = client.register_script(_script("release"))
        self._seed_script = client.register_script(_script("seed"))

    def _head(self) -> list[str]:
        return [self.keys.epoch, self.keys.revision, self.keys.head, self.keys.log]

    def _args(self, change_id: str) -> list[str]:
        return [change_id, self.keys.events, str(LOG_LENGTH)]

    def _run(self, script: Any, keys: list[str], args: list[str]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.ResponseError as err:
            message = str(err)
            if message.startswith("EMPTY"):
                raise StoreEmpty() from err
            if message.startswith("FOREIGN"):
                raise StoreForeign(f"{message.removeprefix('FOREIGN ')}; nothing was changed. Upgrade every "
                                   "controller (docs/upgrading.md), then rebuild the store from the hosts with "
                                   "`fab recover`") from err
            if message.startswith("EXISTS"):
                raise StoreExists(f"{message.removeprefix('EXISTS ')}; nothing was changed (init makes a new "
                                  "store only where there is none; `fab recover` replaces one)") from err
            if message.startswith("NOHISTORY"):
                raise UsageError(message.removeprefix("NOHISTORY ")) from err
            if message.startswith("LIMIT"):
                raise ProtocolError(f"value refused: {message.removeprefix('LIMIT ')}") from err
            if "NOPERM" in message or "no permissions" in message:
                raise StoreUnavailable(f"Redis refused the publisher: {message}; check the ACL user") from err
            raise FrontfleetError(f"Redis refused the change: {message}") from err
        except redis.RedisError as err:
            raise StoreUnavailable(f"cannot reach Redis: {err}") from err

    # --- shared data --------------------------------------------------------------------------

    def _data(self, op: str, key: str, value: str) -> Change:
        change_id = new_change_id()
        result = self._run(self._data_script, [*self._head(), self.keys.data],
                           [*self._args(change_id), op, validate_data_key(key), value, str(MAX_DATA_KEYS),
                            str(MAX_DATA_BYTES)])
        revision = int(result[1])
        return Change(result[0], revision, change_id if revision else "")

    def data_set(self, key: str, value_json: str) -> Change:
        """Set a key; a value agents could not serve, or one over the data set's caps, is refused (exit 2)."""
        return self._data("set", key, validate_json_value(value_json))

    def data_del(self, key: str) -> Change:
        """Delete a key; revision 0 in the result means it was not set (nothing changed)."""
        return self._data("del", key, "")

    def data_get(self, key: str) -> Any:
        raw = self.call(self.client.hget, self.keys.data, validate_data_key(key))
        if raw is None:
            raise UsageError(f"no data key {key!r}; `data list` shows the keys that are set")
        return _stored_value(key, raw)

    def data_list(self) -> dict[str, Any]:
        raw = self.call(self.client.hgetall, self.keys.data)
        return {k: _stored_value(k, v) for k, v in sorted(raw.items())}

    # --- releases -----------------------------------------------------------------------------

    def _release(self, op: str, release: str, meta: dict[str, Any] | None = None,
                 hosts: Iterable[str] = ()) -> Change:
        keys = [*self._head(), self.keys.desired, self.keys.history, self.keys.history_position, self.keys.releases]
        change_id = new_change_id()
        args = [*self._args(change_id), op, release, json.dumps(meta) if meta else "", str(self.switch_margin_ms),
                *hosts]
        result = self._run(self._release_script, keys, args)
        return Change(result[0], int(result[1]), change_id)

    # --- new epochs ---------------------------------------------------------------------------

    def seed(self, how: str, continues_from: Point | None = None, data: dict[str, str] | None = None,
             release: str | None = None, history: list[str] | None = None,
             metadata: dict[str, dict[str, Any]] | None = None, replace: bool = False) -> Change:
        """Make a new epoch holding exactly this state, in one step; its origin says how it was made and what it
        continues from (agents follow a new epoch only when it continues from what they applied, or is a
        recovery). Refused on a store that has an epoch unless replace (StoreExists)."""
        if how not in ORIGINS:
            raise ValueError(f"unknown origin {how!r}")
        change_id = new_change_id()
        epoch = new_change_id()
        origin = {"how": how, "continues_from": continues_from.to_json() if continues_from else None,
                  **who_and_when()}
        keys = [*self._head(), self.keys.origin, self.keys.data, self.keys.desired, self.keys.history,
                self.keys.history_position, self.keys.releases]
        pairs = [item for key in sorted(data or {}) for item in (validate_data_key(key), (data or {})[key])]
        args = [*self._args(change_id), epoch, "replace" if replace else "", json.dumps(origin),
                validate_release_id(release) if release else "", json.dumps(history or []),
                json.dumps({r: json.dumps(m) for r, m in (metadata or {}).items()}), *pairs]
        result = self._run(self._seed_script, keys, args)
        return Change(result[0], int(result[1]), change_id)

    def init(self) -> Change:
        """A new, empty store for a new fleet (the release play runs it when no web host has a release yet)."""
        return self.seed("init")

    def activate(self, release: str, meta: dict[str, Any] | None = None) -> Change:
        """Move the whole fleet to a release (a rollout): history appends, overrides are cleared."""
        return self._release("activate", validate_release_id(release), meta)

    def override(self, release: str, hosts: Iterable[str], meta: dict[str, Any] | None = None) -> Change:
        """Move only these hosts (a canary); the fleet value and history stay."""
        return self._release("override", validate_release_id(release), meta, [validate_host(h) for h in hosts])

    def clear_overrides(self, hosts: Iterable[str]) -> Change:
        return self._release("clear", "", None, [validate_host(h) for h in hosts])

    def rollback(self, to: str | None = None) -> Change:
        """One step back in the activation history, or to a named release."""
        if to is None:
            return self._release("rollback", "")
        return self._release("goto", validate_release_id(to))

    def restore(self, desired: Desired, history: History) -> Change:
        """Put back a saved desired state and history (a failed rollout undoing itself)."""
        saved: dict[str, Any] = {"overrides": desired.overrides or {}, "history": history.releases,
                                 "position": history.position}
        if desired.fleet:
            saved["fleet"] = desired.fleet
        return self._release("restore", json.dumps(saved))

    def desired(self) -> Desired:
        return Desired.from_hash(self.call(self.client.hgetall, self.keys.desired))

    def history(self) -> History:
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(self.keys.history, 0, -1)
        pipe.get(self.keys.history_position)
        releases, position = self.call(pipe.execute)
        return History(list(releases), int(position) if position is not None else -1)

    def release_metadata(self) -> dict[str, dict[str, Any]]:
        raw = self.call(self.client.hgetall, self.keys.releases)
        return {k: json.loads(v) for k, v in raw.items()}

    def forget_releases(self, releases: Iterable[str]) -> None:
        """Drop metadata of releases that no host keeps any more (after a prune)."""
        ids = list(releases)
        if ids:
            self.call(self.client.hdel, self.keys.releases, *ids)

    # --- reading ------------------------------------------------------------------------------

    def has_epoch(self) -> bool:
        """Whether the store has an epoch (one GET; the snapshot reads the whole data set)."""
        return bool(self.call(self.client.exists, self.keys.epoch))

    def snapshot(self) -> Snapshot:
        pipe = self.client.pipeline(transaction=True)
        queue_snapshot(pipe, self.keys)
        return parse_snapshot(self.call(pipe.execute))

    def server_time(self) -> float:
        seconds, micros = self.call(self.client.time)
        return float(seconds) + float(micros) / 1e6

    def call(self, fn: Any, *args: Any) -> Any:
        """Run one client call, turning redis-py errors into frontfleet errors."""
        try:
            return fn(*args)
        except redis.ResponseError as err:
            raise StoreUnavailable(f"Redis refused the request: {err}") from err
        except redis.RedisError as err:
            raise StoreUnavailable(f"cannot reach Redis: {err}") from err
