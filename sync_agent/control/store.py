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
    LockHeld,
    LockLost,
    OutcomeUnknown,
    ProtocolError,
    RolloutUnfinished,
    StoreEmpty,
    StoreExists,
    StoreForeign,
    StoreUnavailable,
    UsageError,
)
from ..protocol import (
    CHANGES_LENGTH,
    LOG_LENGTH,
    MAX_DATA_BYTES,
    MAX_DATA_KEYS,
    MAX_PRIVATE_BYTES,
    MAX_PRIVATE_KEYS,
    REQUEST_TTL_MS,
    Desired,
    Keys,
    is_change_id,
    load_json,
    new_change_id,
    validate_data_key,
    validate_host,
    validate_json_value,
    validate_release_id,
)
from ..snapshot import Point, Snapshot, parse_snapshot, queue_snapshot
from .records import ChangeEntry, History, RolloutRecord, saved_state, unfinished_message

log = logging.getLogger(__name__)

URL_ENV = "FRONTFLEET_REDIS_URL"
SWITCH_MARGIN_MS = 50  # release events' switch_at = Redis TIME + this: above the p99 delivery to every agent
PASSWORD_FILE_ENV = "FRONTFLEET_REDIS_PASSWORD_FILE"
SOCKET_TIMEOUT = 15.0  # seconds a control-plane request waits for Redis' reply: a reply that never comes is lost


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
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                      socket_timeout=SOCKET_TIMEOUT, **extra)
    except ValueError as err:
        raise UsageError(f"bad Redis URL {url!r}: {err}") from err
    return client


def who() -> str:
    """Who makes a change, as the record of changes and release metadata name them."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def who_and_when() -> dict[str, str]:
    return {"who": who(), "when": datetime.now(UTC).isoformat(timespec="seconds")}


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


class Store:
    """Publisher operations on one namespace. Every method is one round trip or one script."""

    def __init__(self, client: redis.Redis, namespace: str, switch_margin_ms: int = SWITCH_MARGIN_MS) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.switch_margin_ms = switch_margin_ms
        self.who = who()
        self._data_script = client.register_script(_script("data"))
        self._release_script = client.register_script(_script("release"))
        self._seed_script = client.register_script(_script("seed"))
        self._rollout_script = client.register_script(_script("rollout"))
        self._forget_script = client.register_script(_script("forget"))

    def _common(self, change_id: str, token: str, keep_outcome: bool) -> tuple[list[str], list[str]]:
        """The keys and arguments every change script starts with (lua/common.lua)."""
        keys = [self.keys.epoch, self.keys.revision, self.keys.head, self.keys.log, self.keys.lock,
                self.keys.changes, self.keys.request(change_id)]
        args = [change_id, self.keys.events, str(LOG_LENGTH), token, self.who, str(CHANGES_LENGTH),
                str(REQUEST_TTL_MS if keep_outcome else 0)]
        return keys, args

    def _request(self, script: Any, token: str, keys: list[str], args: list[str],
                 request: str | None = None) -> tuple[str, Any]:
        """Run a release request (fenced by the deploy lock, made once per id): (its id, its outcome).

        redis-py sends a request again when its reply is lost; the script answers a repeat with the first outcome.
        When Redis stays away, the request is settled: given up for good if it was never made, else its outcome.
        A request id given again (a user's retry of an outcome that was unknown) is made at most once too.
        """
        if request is not None and not is_change_id(request):
            raise UsageError(f"--request {request!r} is not a request id (16 hex digits, as an unknown outcome "
                             "prints it)")
        change_id = request or new_change_id()
        common_keys, common_args = self._common(change_id, token, keep_outcome=True)
        try:
            return change_id, self._run(script, [*common_keys, *keys], [*common_args, *args])
        except StoreUnavailable as err:
            if not isinstance(err.__cause__, redis.ConnectionError | redis.TimeoutError):
                raise
            return change_id, self._settle(change_id, err)

    def _settle(self, change_id: str, err: StoreUnavailable) -> Any:
        """Whether a request whose reply was lost was made: its outcome if so; if not, it is marked abandoned, so a
        copy still on its way is never made, and StoreUnavailable says nothing changed."""
        key = self.keys.request(change_id)
        try:
            if self.client.set(key, "abandoned", nx=True, px=REQUEST_TTL_MS):
                raise StoreUnavailable(f"{err}; request {change_id} was not made, nothing was changed") from err
            outcome = self.client.get(key)
        except redis.RedisError as again:
            raise OutcomeUnknown(
                f"Redis stopped answering while request {change_id} was on its way ({err.__cause__}): whether it "
                f"was made is not known. Once Redis answers, `fab log` lists request {change_id} if it was made and "
                "`fab status` shows where the fleet is; check both before trying again", change_id) from again
        if outcome is None or outcome == "abandoned":
            raise StoreUnavailable(f"{err}; request {change_id} was not made, nothing was changed") from err
        return json.loads(str(outcome))

    def _run(self, script: Any, keys: list[str], args: list[str]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.ResponseError as err:
            message = str(err)
            if message.startswith("LOCKLOST"):
                raise LockLost(message.removeprefix("LOCKLOST ")) from err
            if message.startswith("LOCKHELD"):
                pttl, _, holder = message.removeprefix("LOCKHELD ").partition(" ")
                raise LockHeld(holder, max(int(pttl), 0) / 1000) from err
            if message.startswith("UNFINISHED"):
                raise RolloutUnfinished(unfinished_message(RolloutRecord.from_json(
                    message.removeprefix("UNFINISHED ")))) from err
            if message.startswith("ABANDONED"):
                raise StoreUnavailable(message.removeprefix("ABANDONED ")) from err
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
            if message.startswith("CLASH"):
                raise UsageError(f"{message.removeprefix('CLASH ')}; nothing was changed") from err
            if "NOPERM" in message or "no permissions" in message:
                raise StoreUnavailable(f"Redis refused the publisher: {message}; check the ACL user") from err
            raise FrontfleetError(f"Redis refused the change: {message}") from err
        except redis.RedisError as err:
            raise StoreUnavailable(f"cannot reach Redis: {err}") from err

    # --- shared data --------------------------------------------------------------------------

    def _data(self, op: str, key: str, value: str, private: bool) -> Change:
        change_id = new_change_id()
        keys, args = self._common(change_id, "", keep_outcome=False)
        hashes = [self.keys.private, self.keys.data] if private else [self.keys.data, self.keys.private]
        caps = (MAX_PRIVATE_KEYS, MAX_PRIVATE_BYTES) if private else (MAX_DATA_KEYS, MAX_DATA_BYTES)
        result = self._run(self._data_script, [*keys, *hashes],
                           [*args, op, validate_data_key(key), value, str(caps[0]), str(caps[1]),
                            "private" if private else "data"])
        revision = int(result[1])
        return Change(result[0], revision, change_id if revision else "")

    def data_set(self, key: str, value_json: str, private: bool = False) -> Change:
        """Set a key (private: in NS:private, which reaches hosts' private templates only); a value agents could
        not serve, one over the caps, or a key that is set on the other side (public/private), is refused."""
        return self._data("set", key, validate_json_value(value_json), private)

    def data_del(self, key: str, private: bool = False) -> Change:
        """Delete a key; revision 0 in the result means it was not set (nothing changed)."""
        return self._data("del", key, "", private)

    def data_get(self, key: str, private: bool = False) -> Any:
        raw = self.call(self.client.hget, self.keys.private if private else self.keys.data, validate_data_key(key))
        if raw is None:
            if not private and self.call(self.client.hexists, self.keys.private, key):
                raise UsageError(f"{key!r} is a private key; `data get --private {key}` prints its value")
            kind = "private data key" if private else "data key"
            raise UsageError(f"no {kind} {key!r}; `data list` shows the keys that are set")
        return _stored_value(key, raw)

    def data_list(self) -> dict[str, Any]:
        raw = self.call(self.client.hgetall, self.keys.data)
        return {k: _stored_value(k, v) for k, v in sorted(raw.items())}

    def private_list(self) -> dict[str, Any]:
        """Every private key and value: for the controller's own user (`data list --private`, an export)."""
        raw = self.call(self.client.hgetall, self.keys.private)
        return {k: _stored_value(k, v) for k, v in sorted(raw.items())}

    def private_keys(self) -> list[str]:
        """The private keys' names alone (what `data list` shows without --private)."""
        return sorted(self.call(self.client.hkeys, self.keys.private))

    # --- releases -----------------------------------------------------------------------------

    def _release(self, op: str, release: str, token: str, meta: dict[str, Any] | None = None,
                 hosts: Iterable[str] = (), request: str | None = None) -> Change:
        keys = [self.keys.desired, self.keys.history, self.keys.history_position, self.keys.releases]
        args = [op, release, json.dumps(meta) if meta else "", str(self.switch_margin_ms), *hosts]
        change_id, result = self._request(self._release_script, token, keys, args, request)
        return Change(result[0], int(result[1]), change_id)

    # --- new epochs ---------------------------------------------------------------------------

    def seed(self, how: str, continues_from: Point | None = None, data: dict[str, str] | None = None,
             release: str | None = None, history: list[str] | None = None,
             metadata: dict[str, dict[str, Any]] | None = None, replace: bool = False, token: str = "",
             private: dict[str, str] | None = None) -> Change:
        """Make a new epoch holding exactly this state, in one step; its origin says how it was made and what it
        continues from (agents follow a new epoch only when it continues from what they applied, or is a
        recovery). Refused on a store that has an epoch unless replace (StoreExists)."""
        if how not in ORIGINS:
            raise ValueError(f"unknown origin {how!r}")
        epoch = new_change_id()
        origin = {"how": how, "continues_from": continues_from.to_json() if continues_from else None,
                  **who_and_when()}
        keys = [self.keys.origin, self.keys.data, self.keys.desired, self.keys.history, self.keys.history_position,
                self.keys.releases, self.keys.rollout, self.keys.private]
        pairs = [item for key in sorted(data or {}) for item in (validate_data_key(key), (data or {})[key])]
        secret = {validate_data_key(key): value for key, value in sorted((private or {}).items())}
        args = [epoch, "replace" if replace else "", json.dumps(origin),
                validate_release_id(release) if release else "", json.dumps(history or []),
                json.dumps({r: json.dumps(m) for r, m in (metadata or {}).items()}),
                json.dumps(secret, ensure_ascii=False), *pairs]
        change_id, result = self._request(self._seed_script, token, keys, args)
        return Change(result[0], int(result[1]), change_id)

    def init(self, token: str = "") -> Change:
        """A new, empty store for a new fleet (the release play runs it when no web host has a release yet)."""
        return self.seed("init", token=token)

    # Release changes carry the deploy-lock token of the operation (lock.Hold.token): the script refuses them when
    # the caller no longer holds the lock, and when another operation holds it and the caller none.

    def activate(self, release: str, meta: dict[str, Any] | None = None, token: str = "") -> Change:
        """Move the whole fleet to a release (a rollout): history appends, overrides are cleared."""
        return self._release("activate", validate_release_id(release), token, meta)

    def override(self, release: str, hosts: Iterable[str], meta: dict[str, Any] | None = None,
                 token: str = "") -> Change:
        """Move only these hosts (a canary); the fleet value and history stay."""
        return self._release("override", validate_release_id(release), token, meta,
                             [validate_host(h) for h in hosts])

    def rollback(self, to: str | None = None, token: str = "", request: str | None = None) -> Change:
        """One step back in the activation history, or to a named release."""
        if to is None:
            return self._release("rollback", "", token, request=request)
        return self._release("goto", validate_release_id(to), token, request=request)

    def restore(self, desired: Desired, history: History, token: str = "") -> Change:
        """Put back a saved desired state and history (a failed rollout undoing itself, an abort)."""
        return self._release("restore", json.dumps(saved_state(desired, history)), token)

    # --- the record of an unfinished rollout -----------------------------------------------------------

    def _rollout_record(self, token: str, op: str, value: str) -> int:
        keys, args = self._common(new_change_id(), token, keep_outcome=False)
        return int(self._run(self._rollout_script, [*keys, self.keys.rollout], [*args, op, value]))

    def begin_rollout(self, record: RolloutRecord, token: str) -> None:
        """Record a rollout before its first switch (refused with RolloutUnfinished while another is recorded)."""
        self._rollout_record(token, "begin", json.dumps(record.to_json()))

    def rollout_phase(self, phase: str, token: str) -> None:
        self._rollout_record(token, "phase", phase)

    def finish_rollout(self, rollout_id: str, token: str) -> bool:
        """Remove the record of this rollout ("" : whichever is recorded, an abort); whether there was one."""
        return self._rollout_record(token, "finish", rollout_id) == 1

    def unfinished_rollout(self) -> RolloutRecord | None:
        raw = self.call(self.client.get, self.keys.rollout)
        return RolloutRecord.from_json(raw) if raw else None

    def changes(self, limit: int = CHANGES_LENGTH) -> list[ChangeEntry]:
        """The record of who changed what, newest first; an entry this controller cannot read is shown as such."""
        return [ChangeEntry.from_json(raw) for raw in self.call(self.client.lrange, self.keys.changes, 0, limit - 1)]

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

    def forget_releases(self, releases: Iterable[str], token: str = "") -> None:
        """A prune's change to the store: drop the metadata of releases no host keeps any more, and record it."""
        self._request(self._forget_script, token, [self.keys.releases], [validate_release_id(r) for r in releases])

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
