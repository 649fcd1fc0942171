"""What the agent has applied, and how an event or a snapshot changes it: no I/O, so the epoch and revision rules
are unit-tested without Redis (tests/unit/test_applied_state.py). agent.py reads the messages and the snapshot,
asks this state what each calls for (decisions.judge_event), and writes what a batch changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..protocol import LOG_LENGTH, Desired, Message
from ..snapshot import Point, Snapshot
from .decisions import Verdict, judge_event, judge_snapshot, snapshot_is_news

log = logging.getLogger(__name__)

EMPTY_STORE_ERROR = ("the store is empty (Redis lost its data): serving what is on disk; run `fab recover` to rebuild "
                     "the store from what the hosts hold (docs/reliability.md)")
NEW_STORE_ERROR = "the store is empty: nothing was published yet (the release play of deploy.yml makes the store)"
# Error categories, most important first: the status `error` field lists the current ones in this order.
ERROR_ORDER = ("store", "history", "snapshot", "write", "session", "release", "data", "template", "message")
# The categories that make the host `degraded`: it does not serve all of the desired state, or cannot tell.
# A template that fails to render or a bad event skipped is reported, but the host serves everything else.
DEGRADING = frozenset({"store", "history", "snapshot", "write", "session", "release", "data"})
EPOCHS_REMEMBERED = 16  # epochs this host left, never followed back (a save from before a recovery)


@dataclass
class Batch:
    """What a batch of messages changed, so the files are written once per batch."""

    data: bool = False
    private: bool = False  # a private key changed: R/private/ is written again, nothing under shared/
    release: bool = False
    applied: int = 0
    first: int = 0
    resynced: bool = False
    snapshot_read: bool = False  # an event made this batch read the snapshot: it reads it at most once
    switch_at: int | None = None  # the last release event's deadline (µs, Redis' clock); None: switch at once
    changes: list[Message] = field(default_factory=list)  # the events applied, in order (for the live stream)


@dataclass
class AppliedState:
    """The desired state as this agent applied it (in memory; the agent writes the files), what it reports wrong
    (category → text, see ERROR_ORDER), and the (epoch, revision) whose writes all landed: the acknowledgement.

    The applied point (epoch, revision, change id) and the epochs left are kept on disk across restarts
    (shared_data.AppliedFile): an agent restarted is no newcomer that any snapshot may set."""

    host: str
    epoch: str | None = None
    revision: int = 0
    change_id: str | None = None
    known: dict[int, str] = field(default_factory=dict)  # ids of the epoch's recent revisions, as far as seen
    left: list[str] = field(default_factory=list)  # epochs this host left, newest last
    data: dict[str, Any] = field(default_factory=dict)
    # Private data: its own dict, never merged into data, so what reads data (data.json, public templates, the live
    # stream) cannot carry a private value.
    private: dict[str, Any] = field(default_factory=dict)
    desired: Desired = field(default_factory=Desired)
    synced: bool = False  # a snapshot was applied since the process started
    loaded: bool = False  # data and desired came from a snapshot this process followed (not an empty or refused one)
    store_empty: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    acked: tuple[str | None, int] = (None, 0)
    acked_id: str | None = None
    batches: int = 0
    resyncs: int = 0
    skipped: int = 0

    @property
    def state(self) -> str:
        if not self.synced or self.store_empty or not DEGRADING.isdisjoint(self.errors):
            return "degraded"
        return "ready"

    def error_text(self) -> str:
        return "; ".join(self.errors[kind] for kind in ERROR_ORDER if kind in self.errors)

    @property
    def point(self) -> Point | None:
        """What this host applied, None when nothing yet (a new host)."""
        return Point(self.epoch, self.revision, self.change_id) if self.epoch is not None else None

    @property
    def acked_point(self) -> Point | None:
        epoch, revision = self.acked
        return Point(epoch, revision, self.acked_id) if epoch is not None else None

    def restore(self, point: Point | None, left: list[str]) -> None:
        """Start from what the host applied before a restart (its acknowledged point, kept on disk)."""
        if point is not None:
            self.epoch, self.revision, self.change_id = point.epoch, point.revision, point.id
            self.acked, self.acked_id = (point.epoch, point.revision), point.id
        self.left = left[-EPOCHS_REMEMBERED:]

    def judge(self, message: Message, batch: Batch) -> Verdict:
        return judge_event(self.point, self.known, message, batch.snapshot_read)

    def is_news(self, snapshot: Snapshot) -> bool:
        return snapshot_is_news(self.point, snapshot)

    def apply_message(self, message: Message, batch: Batch) -> None:
        """Apply the next revision (judge said APPLY)."""
        if message.data is not None:
            message.data.apply(self.data)
            batch.data = True
        elif message.private is not None:
            message.private.apply(self.private)
            batch.private = True
        elif message.desired is not None:
            self.desired = message.desired
            batch.release = True
            batch.switch_at = message.switch_at
        self.revision, self.change_id = message.revision, message.id
        batch.changes.append(message)
        if message.id is not None:
            self.known[message.revision] = message.id
            if len(self.known) > LOG_LENGTH:  # revisions go in rising (a snapshot's log, then rev + 1 each):
                del self.known[next(iter(self.known))]  # the first is the oldest, no scan of all 1,024
        batch.applied += 1
        batch.first = batch.first or message.revision
        self.errors.pop("message", None)

    def apply_snapshot(self, snapshot: Snapshot, batch: Batch, why: str) -> bool:
        """Make the snapshot the applied state, if its history contains what this host applied (judge_snapshot);
        returns whether it did. An empty store, or one this host cannot follow, applies nothing: the host keeps
        serving what it has, reported `degraded` with the reason, until a snapshot it can follow arrives."""
        if snapshot.empty:
            batch.resynced = True
            error = EMPTY_STORE_ERROR if self.epoch is not None else NEW_STORE_ERROR
            if not self.store_empty:
                log.error("resync (%s): %s", why, error)
            self.store_empty = True
            self.errors["store"] = error
            self.synced = True
            return False
        refusal = judge_snapshot(self.point, self.left, snapshot)
        if refusal is not None:
            if self.errors.get("history") != refusal:
                log.error("not following the store (%s): %s", why, refusal)
            self.errors["history"] = refusal
            self.store_empty = False
            self.errors.pop("store", None)
            return False
        batch.resynced = True
        if self.errors.pop("history", None) is not None:
            log.info("the store's history holds what this host applied again")
        if self.epoch is not None and snapshot.epoch != self.epoch:
            kept = [e for e in self.left if e != self.epoch][-(EPOCHS_REMEMBERED - 1):]
            self.left = [*kept, self.epoch]
        if self.store_empty:
            log.info("the store has data again (epoch %s, revision %d)", snapshot.epoch, snapshot.revision)
        log.info("resync (%s): epoch %s, revision %d, %d data keys, release %s", why, snapshot.epoch,
                 snapshot.revision, len(snapshot.data), snapshot.desired.target_for(self.host) or "-")
        self.store_empty = False
        self.errors.pop("store", None)
        self.errors.pop("message", None)
        if snapshot.bad_keys:
            self.errors["data"] = (f"skipped {len(snapshot.bad_keys)} key(s) of the snapshot that this agent cannot "
                                   f"serve: {', '.join(snapshot.bad_keys[:5])} (the agent's log says why)")
        else:
            self.errors.pop("data", None)
        self.epoch, self.revision = snapshot.epoch, snapshot.revision
        self.change_id = snapshot.head[1] if snapshot.head is not None else None
        self.known = dict(snapshot.log)
        self.data = dict(snapshot.data)
        self.private = dict(snapshot.private)
        self.desired = snapshot.desired
        self.synced = self.loaded = True
        batch.data = batch.private = batch.release = True
        batch.switch_at = None  # a snapshot's release is due already
        return True
