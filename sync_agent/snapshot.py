"""The full desired state, read from Redis keys in one transaction.

Pub/Sub is the fast path, never the only one: agents read this snapshot on
every (re)connect, on a revision gap or a new epoch, and on a timer. The
same commands serve the sync control plane and the asyncio agent, so the
reading is written once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ProtocolError, SnapshotRefused
from .protocol import MAX_ID_LENGTH, MAX_KEY_LENGTH, Desired, Keys, is_change_id, load_json, validate_data_key

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """The part of a redis-py pipeline (sync or asyncio) the snapshot needs."""

    def get(self, name: str) -> Any: ...
    def hgetall(self, name: str) -> Any: ...
    def lrange(self, name: str, start: int, end: int) -> Any: ...


@dataclass(frozen=True)
class Point:
    """A point in a store's history: what an agent applied, what a new epoch continues from. id is None for a
    point from before the change chain (a store or an agent of an earlier version)."""

    epoch: str
    revision: int
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "revision": self.revision, "id": self.id}

    @classmethod
    def from_json(cls, raw: Any) -> Point:
        """Parse a point; ValueError on anything else (it is input: from the store, a host, a file)."""
        if not isinstance(raw, dict):
            raise ValueError(f"a point in the history must be an object, got {type(raw).__name__}")
        epoch, revision, change_id = raw.get("epoch"), raw.get("revision"), raw.get("id")
        if not isinstance(epoch, str) or not epoch or len(epoch) > MAX_ID_LENGTH:
            raise ValueError(f"bad epoch {epoch!r:.60}")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise ValueError(f"bad revision {revision!r:.60}")
        if change_id is not None and not is_change_id(change_id):
            raise ValueError(f"bad change id {change_id!r:.60}")
        return cls(epoch, revision, change_id)

    def __str__(self) -> str:
        return f"epoch {self.epoch} revision {self.revision}" + (f" (change {self.id})" if self.id else "")


@dataclass(frozen=True)
class Origin:
    """How an epoch was made (init, import, recover) and the point it continues from."""

    how: str
    continues_from: Point | None = None
    who: str = ""
    when: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Epoch, revision, shared data and desired release at one instant, with the change chain: the head (the
    last change's revision and id; None in a store from before the chain), the log of recent (revision, id),
    oldest first, and how the epoch was made."""

    epoch: str | None
    revision: int
    data: dict[str, Any] = field(default_factory=dict)
    desired: Desired = field(default_factory=Desired)
    bad_keys: tuple[str, ...] = ()
    head: tuple[int, str] | None = None
    log: tuple[tuple[int, str], ...] = ()
    origin: Origin | None = None
    private: dict[str, Any] = field(default_factory=dict)  # NS:private: kept apart from data, never served

    @property
    def empty(self) -> bool:
        """True when the store has no epoch: Redis lost its data, or nothing was ever published."""
        return self.epoch is None


def queue_snapshot(pipe: Pipeline, keys: Keys) -> None:
    """Queue the snapshot's reads on a transactional pipeline (MULTI/EXEC)."""
    pipe.get(keys.epoch)
    pipe.get(keys.revision)
    pipe.hgetall(keys.data)
    pipe.hgetall(keys.desired)
    pipe.get(keys.head)
    pipe.lrange(keys.log, 0, -1)
    pipe.get(keys.origin)
    pipe.hgetall(keys.private)


def _text(value: bytes | str | None) -> str | None:
    """Decode a reply strictly: bytes that are not UTF-8 raise UnicodeDecodeError, which the callers here treat as
    bad input (a skipped key, or a refused snapshot)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _head(epoch: bytes | str | None, revision: bytes | str | None) -> tuple[str | None, int]:
    """The snapshot's epoch and revision, or SnapshotRefused: without them nothing in it can be ordered."""
    try:
        epoch_text = _text(epoch)
        revision_text = _text(revision)
        number = int(revision_text) if revision_text is not None else 0
    except ValueError as err:  # UnicodeDecodeError included
        raise SnapshotRefused(f"the store's revision {revision!r:.60} or epoch {epoch!r:.60} cannot be read: "
                              f"{err}") from err
    if epoch_text is not None and (not epoch_text or len(epoch_text) > MAX_ID_LENGTH):
        raise SnapshotRefused(f"the store's epoch {epoch_text[:70]!r} is not a valid epoch")
    if number < 0:
        raise SnapshotRefused(f"the store's revision {number} is negative")
    return epoch_text, number


def _entry(raw: bytes | str | None) -> tuple[int, str]:
    text = _text(raw) or ""
    revision, _, change_id = text.partition(":")
    if not revision.isdigit() or not is_change_id(change_id):
        raise ValueError(f"{text[:60]!r} is not <revision>:<change id>")
    return int(revision), change_id


def _origin(raw: bytes | str | None) -> Origin | None:
    if raw is None:
        return None
    body = load_json(raw)
    if not isinstance(body, dict) or not isinstance(body.get("how"), str):
        raise ValueError("not an object with a \"how\"")
    base = body.get("continues_from")
    return Origin(body["how"], Point.from_json(base) if base is not None else None, str(body.get("who", "")),
                  str(body.get("when", "")))


def _chain(raw_head: Any, raw_log: Any, raw_origin: Any) -> tuple[tuple[int, str] | None, tuple[tuple[int, str], ...],
                                                                 Origin | None]:
    """The head, log and origin, or SnapshotRefused: a chain that cannot be read cannot vouch for anything."""
    try:
        head = _entry(raw_head) if raw_head is not None else None
        log = tuple(_entry(item) for item in raw_log or ())
        return head, log, _origin(raw_origin)
    except (ProtocolError, ValueError) as err:  # UnicodeDecodeError included
        raise SnapshotRefused(f"the store's change chain cannot be read: {err}") from err


def _printable(raw: bytes | str) -> str:
    return raw.decode(errors="backslashreplace") if isinstance(raw, bytes) else raw


def parse_snapshot(results: list[Any]) -> Snapshot:
    """Build a Snapshot from the results of queue_snapshot.

    A data key or value that fails validation — any way it can fail — is skipped and named in bad_keys, the
    rest applies; an epoch or revision that cannot be read refuses the whole snapshot (SnapshotRefused)."""
    epoch, revision, raw_data, raw_desired = results[:4]
    epoch_text, number = _head(epoch, revision)
    head, chain_log, origin = _chain(*results[4:7]) if len(results) >= 7 else (None, (), None)
    bad: list[str] = []
    data = _values(raw_data, "", bad)
    private = _values(results[7] if len(results) >= 8 else {}, "private ", bad)
    try:
        desired = Desired.from_hash({_text(k) or "": _text(v) or "" for k, v in raw_desired.items()})
    except (ProtocolError, ValueError) as err:
        log.warning("skipping the desired release from the snapshot: %s", err)
        desired = Desired()
        bad.append("desired")
    return Snapshot(epoch=epoch_text, revision=number, data=data, desired=desired, bad_keys=tuple(bad), head=head,
                    log=chain_log, origin=origin, private=private)


def _values(raw: dict[Any, Any], kind: str, bad: list[str]) -> dict[str, Any]:
    """A data hash's keys and parsed values; a key or value that fails validation is skipped and named in bad (a
    private one as "private KEY"; its value is never logged)."""
    values: dict[str, Any] = {}
    for raw_key, raw_value in raw.items():
        try:
            key = validate_data_key(_text(raw_key))
            values[key] = load_json(raw_value if raw_value is not None else b"null")
        except (ProtocolError, ValueError) as err:
            name = kind + _printable(raw_key)[:MAX_KEY_LENGTH]
            why = str(err) if not kind else "its key or value cannot be served"  # a private value's text never
            log.warning("skipping data key %r from the snapshot: %s", name, why)  # reaches a log
            bad.append(name)
    return values
