"""What the agent has applied, and how an event or a snapshot changes it: no I/O, so the epoch and revision rules
are unit-tested without Redis (tests/unit/test_applied_state.py). agent.py reads the messages and the snapshot,
asks this state what each calls for (decisions.judge_event), and writes what a batch changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Desired, Message
from ..snapshot import Snapshot
from .decisions import Verdict, judge_event, snapshot_is_news

log = logging.getLogger(__name__)

EMPTY_STORE_ERROR = ("the store is empty (Redis lost its data, or nothing was published yet): serving what is on "
                     "disk; an operator should re-publish the release and the data (docs/reliability.md)")
# Error categories, most important first: the status `error` field lists the current ones in this order.
ERROR_ORDER = ("store", "snapshot", "write", "session", "release", "data", "template", "message")
# The categories that make the host `degraded`: it does not serve all of the desired state, or cannot tell.
# A template that fails to render or a bad event skipped is reported, but the host serves everything else.
DEGRADING = frozenset({"store", "snapshot", "write", "session", "release", "data"})


@dataclass
class Batch:
    """What a batch of messages changed, so the files are written once per batch."""

    data: bool = False
    release: bool = False
    applied: int = 0
    first: int = 0
    resynced: bool = False
    snapshot_read: bool = False  # an event made this batch read the snapshot: it reads it at most once
    switch_at: int | None = None  # the last release event's deadline (µs, Redis' clock); None: switch at once


@dataclass
class AppliedState:
    """The desired state as this agent applied it (in memory; the agent writes the files), what it reports wrong
    (category → text, see ERROR_ORDER), and the (epoch, revision) whose writes all landed: the acknowledgement."""

    host: str
    epoch: str | None = None
    revision: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    desired: Desired = field(default_factory=Desired)
    synced: bool = False  # a snapshot was applied since the process started
    store_empty: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    acked: tuple[str | None, int] = (None, 0)
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

    def judge(self, message: Message, batch: Batch) -> Verdict:
        return judge_event(self.epoch, self.revision, message.epoch, message.revision, batch.snapshot_read)

    def is_news(self, snapshot: Snapshot) -> bool:
        return snapshot_is_news(self.epoch, self.revision, snapshot.epoch, snapshot.revision)

    def apply_message(self, message: Message, batch: Batch) -> None:
        """Apply the next revision (judge said APPLY)."""
        if message.data is not None:
            change = message.data
            if change.op == "set":
                self.data[change.key] = change.value
            else:
                self.data.pop(change.key, None)
            batch.data = True
        elif message.desired is not None:
            self.desired = message.desired
            batch.release = True
            batch.switch_at = message.switch_at
        self.revision = message.revision
        batch.applied += 1
        batch.first = batch.first or message.revision
        self.errors.pop("message", None)

    def apply_snapshot(self, snapshot: Snapshot, batch: Batch, why: str) -> None:
        """Make the snapshot the applied state. An empty store applies nothing: the host keeps serving what it
        has, reported `degraded`, until the store has data again."""
        batch.resynced = True
        if snapshot.empty:
            if not self.store_empty:
                log.error("resync (%s): %s", why, EMPTY_STORE_ERROR)
            self.store_empty = True
            self.errors["store"] = EMPTY_STORE_ERROR
            self.epoch, self.revision = None, 0
            self.synced = True
            return
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
        self.data = dict(snapshot.data)
        self.desired = snapshot.desired
        self.synced = True
        batch.data = batch.release = True
        batch.switch_at = None  # a snapshot's release is due already
