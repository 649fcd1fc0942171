"""What the live stream sends, decided without I/O: the public state the host serves, the ring of its last
changes, and what a client that reconnects with a Last-Event-ID gets (tests/unit/test_live_hub.py).

The agent feeds `LiveState.update` after each batch's writes landed; it answers with the frames to broadcast.
A client that reconnects is served, in this order (docs/protocol.md, "The live stream"):

1. from the ring, when its id is one of the ring's points: the frames after it, exactly as sent live;
2. from the store's change log (`NS:log`, `NS:changes`), when its id is older than the ring but the store's
   records reach back to it: the current value of every key changed since, at this host's point;
3. else a fresh snapshot: an id of another epoch, too old for both, unknown, or from another history.

Every resume ends with a `release` frame (the release this host serves, with the id of its point): the client
learns a switch it missed, also when it moved to a host that serves another release.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...protocol import Message, validate_data_key
from ...snapshot import Point
from ..shared_data import ReleaseInfo
from .sse import data_frame, parse_event_id, release_frame, snapshot_frame

RING_CHANGES = 1024  # changes the ring keeps (as many as NS:log), unless the config says otherwise
RING_BYTES = 4 * 1024 * 1024  # and at most this many bytes of frames: a few large values must not pin memory
# What the record of changes (NS:changes) calls a release change (lua/release.lua's ops): it changes no data.
RELEASE_CHANGES = frozenset({"activate", "override", "clear", "rollback", "goto", "restore"})
# …and a private key's (lua/data.lua): it changes no public data, and the stream never names it.
PRIVATE_CHANGES = frozenset({"private set", "private del"})


def same_json(a: Any, b: Any) -> bool:
    """Equal JSON values, types included: Python's == takes 1 == 1.0 == True, which a browser tells apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(value, b[key]) for key, value in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(frozen=True)
class Entry:
    """One step of the ring: the frames that take a client from the step before to point (b"" for a change
    that shows nothing, such as a release change)."""

    point: Point
    frames: bytes


class Ring:
    """The last changes sent live, bounded by count and bytes; base is the point before the first of them. Each
    point's first entry is indexed: every page of a host may come back at once, most at the newest point."""

    def __init__(self, size: int = RING_CHANGES, max_bytes: int = RING_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.entries: deque[Entry] = deque()
        self.base: Point | None = None
        self.bytes = 0
        self._first = 0  # the position of entries[0] since the ring was reset
        self._index: dict[Point, int] = {}  # point → the position of its first entry

    def reset(self, base: Point) -> None:
        self.entries.clear()
        self._index.clear()
        self.base, self.bytes, self._first = base, 0, 0

    def append(self, entry: Entry) -> None:
        self._index.setdefault(entry.point, self._first + len(self.entries))
        self.entries.append(entry)
        self.bytes += len(entry.frames)
        while self.entries and (len(self.entries) > self.size or self.bytes > self.max_bytes):
            oldest = self.entries.popleft()
            if self._index.get(oldest.point) == self._first:
                del self._index[oldest.point]  # a later entry of the same point is then reached through base
            self._first += 1
            self.bytes -= len(oldest.frames)
            self.base = oldest.point

    def after(self, point: Point) -> bytes | None:
        """The frames sent after point, or None when point is not in the ring (older, or never one of its
        points). A point that occurs twice resumes from the first: frames sent again apply again alike."""
        if point == self.base:
            return b"".join(entry.frames for entry in self.entries)
        position = self._index.get(point)
        if position is None:
            return None
        newer = len(self.entries) - (position - self._first) - 1
        return b"".join(self.entries[-count].frames for count in range(newer, 0, -1))


def _chains(point: Point, changes: Sequence[Message], to: Point) -> bool:
    """True when changes lead from point to `to`, one revision each (the agent applied them in this order)."""
    first, last = changes[0], changes[-1]
    return (first.epoch == point.epoch and first.revision == point.revision + 1 and first.parent == (point.id or "")
            and Point(last.epoch, last.revision, last.id) == to)


class How(enum.Enum):
    """How a reconnecting client is served."""

    SNAPSHOT = "snapshot"
    RING = "ring"
    STORE = "store"  # from the store's change log: the caller reads it, then calls LiveState.from_record
    WAIT = "wait"  # the id is ahead of this host (it came from a host further on): wait for this host to get there


@dataclass(frozen=True)
class Resume:
    how: How
    why: str
    client: Point | None = None
    frames: bytes = b""


@dataclass(frozen=True)
class StoreRecord:
    """What the store keeps of its recent history, as read in one MULTI: its epoch, NS:log (revision → id) and
    NS:changes (JSON entries, newest first: `what`, `rev`, `id`, `key` for a data change)."""

    epoch: str | None
    log: dict[int, str] = field(default_factory=dict)
    changes: tuple[dict[str, Any], ...] = ()

    @classmethod
    def parse(cls, epoch: bytes | str | None, log: Iterable[bytes | str], changes: Iterable[bytes | str]
              ) -> StoreRecord:
        """Build a record from the raw replies; an entry that cannot be read is left out (the revision it names
        is then not covered, and that resume falls back to a snapshot)."""
        logged: dict[int, str] = {}
        for raw in log:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            revision, _, change_id = text.partition(":")
            if revision.isdigit():
                logged[int(revision)] = change_id
        entries = []
        for raw in changes:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return cls(epoch.decode(errors="replace") if isinstance(epoch, bytes) else epoch, logged, tuple(entries))


def keys_changed_between(client: Point, host: Point, record: StoreRecord) -> set[str] | str:
    """The data keys changed after client up to host (this host's point), from the store's record; or why the
    record cannot tell (the caller then sends a snapshot). Every revision in between must be in NS:log with the
    id NS:changes gives it: a record that does not reach back, or shows another history, tells nothing."""
    if record.epoch != client.epoch:
        return f"the store is at epoch {record.epoch or '-'}, the id names epoch {client.epoch}"
    if client.id is None or record.log.get(client.revision) != client.id:
        return f"the store's log does not hold change {client.id or '-'} at revision {client.revision}"
    if record.log.get(host.revision) != host.id:
        return f"the store's log does not hold this host's point {host}"
    changes = {(entry.get("rev"), entry.get("id")): entry for entry in record.changes}
    keys: set[str] = set()
    for revision in range(client.revision + 1, host.revision + 1):
        entry = changes.get((revision, record.log.get(revision)))
        if entry is None:
            return f"the store's record of changes does not reach back to revision {revision}"
        what = entry.get("what")
        if what in ("data set", "data del"):
            try:
                keys.add(validate_data_key(entry.get("key")))
            except ValueError as err:  # ProtocolError included
                return f"revision {revision} names no key that can be replayed: {err}"
        elif what not in RELEASE_CHANGES and what not in PRIVATE_CHANGES:
            return f"revision {revision} is a change ({what!r:.40}) the stream cannot replay"
    return keys


class LiveState:
    """The public data, point and release as the stream's clients have them, and the ring of recent changes."""

    def __init__(self, host: str, ring_size: int = RING_CHANGES, ring_bytes: int = RING_BYTES) -> None:
        self.host = host
        self.point: Point | None = None
        self.data: dict[str, Any] = {}
        self.release: ReleaseInfo | None = None
        self.ring = Ring(ring_size, ring_bytes)
        self._snapshot: bytes | None = None

    @property
    def ready(self) -> bool:
        """False until the agent applied its first snapshot: before, there is nothing a client could start from."""
        return self.point is not None

    def snapshot(self) -> bytes:
        """The snapshot frame of the current state, built once per state (every new client of it shares it)."""
        assert self.point is not None
        if self._snapshot is None:
            self._snapshot = snapshot_frame(self.point, self.data, self.release, self.host)
        return self._snapshot

    def update(self, point: Point, data: dict[str, Any], changes: Sequence[Message] | None,
               release: ReleaseInfo | None) -> bytes:
        """Take what the agent serves now; return the frames every connected client gets.

        changes: the events the batch applied, in order (None after a snapshot): when they lead from the point
        the clients hold to point, each becomes its own frame; else the keys that differ are sent, at point. A
        new epoch sends a whole snapshot."""
        if self.point is None or point.epoch != self.point.epoch:
            first = self.point is None
            self.point, self.data, self.release, self._snapshot = point, dict(data), release, None
            self.ring.reset(point)
            return b"" if first else self.snapshot()
        out: list[bytes] = []
        if changes and _chains(self.point, changes, point):
            for message in changes:
                out.append(self._change(message))
        else:
            out.append(self._differences(point, data))
        if release != self.release:
            self.release = release
            out.append(release_frame(point, release))
        if point != self.point or any(out):
            self.point, self._snapshot = point, None
        return b"".join(out)

    def _change(self, message: Message) -> bytes:
        point = Point(message.epoch, message.revision, message.id)
        frames = b""
        change = message.data
        if change is not None:
            change.apply(self.data)
            frames = data_frame(point, change.key, change.value, change.op == "set")
        self.ring.append(Entry(point, frames))
        return frames

    def _differences(self, point: Point, data: dict[str, Any]) -> bytes:
        """The keys whose value differs from what the clients have, one frame each, the last with point's id."""
        changed = sorted(key for key in data.keys() | self.data.keys()
                         if key not in data or key not in self.data or not same_json(data[key], self.data[key]))
        if not changed and point == self.point:
            return b""
        self.data = dict(data)
        frames = self.frames_for(changed, point)
        self.ring.append(Entry(point, frames))
        return frames

    def frames_for(self, keys: Sequence[str], point: Point) -> bytes:
        """The current value of each key (deleted when absent), as of point; only the last frame carries the id."""
        return b"".join(data_frame(point, key, self.data.get(key), key in self.data, with_id=index == len(keys) - 1)
                        for index, key in enumerate(keys))

    def plan(self, last_event_id: str | None) -> Resume:
        """How to serve a client that connects with this Last-Event-ID (None: a new client)."""
        assert self.point is not None
        if not last_event_id:
            return Resume(How.SNAPSHOT, "a new stream")
        client = parse_event_id(last_event_id)
        if client is None:
            return Resume(How.SNAPSHOT, f"id {last_event_id[:80]!r} is not one of this stream's")
        if client.epoch != self.point.epoch:
            return Resume(How.SNAPSHOT, f"id of epoch {client.epoch}, this host is at epoch {self.point.epoch}",
                          client)
        if client.revision > self.point.revision:
            return Resume(How.WAIT, f"id at revision {client.revision}, this host at {self.point.revision}", client)
        frames = self.ring.after(client)
        if frames is not None:
            return Resume(How.RING, f"from the ring after revision {client.revision}", client,
                          frames + release_frame(self.point, self.release))
        if client.revision == self.point.revision or client.id is None:
            return Resume(How.SNAPSHOT, f"id {last_event_id[:80]!r} is not in this host's history", client)
        return Resume(How.STORE, f"revision {client.revision} is older than the ring", client)

    def from_record(self, client: Point, record: StoreRecord) -> Resume:
        """Serve a client older than the ring from the store's record, or with a snapshot when it cannot tell."""
        assert self.point is not None
        keys = keys_changed_between(client, self.point, record)
        if isinstance(keys, str):
            return Resume(How.SNAPSHOT, keys, client)
        frames = self.frames_for(sorted(keys), self.point)
        return Resume(How.STORE, f"from the store's log after revision {client.revision}: {len(keys)} key(s) "
                      "changed since", client, frames + release_frame(self.point, self.release))
