"""The agent's pure decisions: what to do with an event, and whether to follow a snapshot, given what it applied.
No I/O, so they are unit-tested without Redis (tests/unit/test_decisions.py); agent.py carries them out.

docs/protocol.md, "Epoch and revision" and "The change chain", states the same rules as tables.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from ..protocol import Message
from ..snapshot import Point, Snapshot

RECOVER_HINT = "run `fab recover` to rebuild the store from what the hosts hold (docs/reliability.md)"


class Verdict(enum.Enum):
    """What an event calls for."""

    APPLY = "apply"  # the next change of the chain the agent holds: apply it
    DUPLICATE = "duplicate"  # a change already applied (or contained in a snapshot): skip it
    RESYNC = "resync"  # a gap, another epoch, a change that does not chain on: read the snapshot
    IGNORE = "ignore"  # would call for a resync, but this batch read the snapshot already: stale or forged


def judge_event(applied: Point | None, known: Mapping[int, str], message: Message,
                batch_read_snapshot: bool) -> Verdict:
    """The verdict on an event for an agent that applied `applied` (known: the ids of the epoch's recent
    revisions, as far as the agent saw them).

    An event never gives a verdict on the store: one that does not chain onto what the agent applied only makes
    it read the snapshot, at most once per batch. Everything in a batch arrived before any snapshot the batch
    read, so that snapshot holds every real change of the batch: an event that still does not follow on is stale
    or forged, and a flood of them cannot turn into a resync storm."""
    if applied is not None and message.epoch == applied.epoch:
        if message.revision <= applied.revision:
            seen = known.get(message.revision)
            if seen is None or seen == message.id:
                return Verdict.DUPLICATE
        elif (message.revision == applied.revision + 1 and message.id is not None
              and message.parent == (applied.id or "")):
            return Verdict.APPLY
    return Verdict.IGNORE if batch_read_snapshot else Verdict.RESYNC


def judge_snapshot(applied: Point | None, left: Collection[str], snapshot: Snapshot) -> str | None:
    """None when the agent may follow the snapshot; else why not (the host keeps what it serves, `degraded`).

    Only a snapshot gives this verdict: its history must contain what the agent applied. A store gone back in time
    (an older RDB, an AOF that lost its tail, a lagging replica) has a lower head, or the agent's revision with
    another id, or a head that passed the agent on another branch; a new epoch must continue from what the agent
    applied, or be an explicit recovery; an epoch the agent left is never taken back."""
    if snapshot.epoch is None:
        return None  # an empty store: handled by the caller (it applies nothing)
    if snapshot.head is None:
        if snapshot.revision and applied is not None and applied.id is not None:
            return (f"the store at {snapshot.epoch} revision {snapshot.revision} has no change chain, but this host "
                    f"applied {applied}: a controller that keeps no chain (an older frontfleet) wrote it, or Redis "
                    f"was restored from before the upgrade; upgrade every controller, then {RECOVER_HINT}")
        if applied is not None and snapshot.epoch == applied.epoch and snapshot.revision < applied.revision:
            return _went_back(applied, snapshot)
        return None  # a store from before the chain, on an agent that never saw one: the upgrade's first step
    head_revision, head_id = snapshot.head
    if head_revision != snapshot.revision:
        return (f"the store is at revision {snapshot.revision} but its change chain ends at {head_revision}: a "
                f"controller that keeps no chain (an older frontfleet) wrote to it, and this host does not apply "
                f"that; upgrade every controller (docs/upgrading.md), then {RECOVER_HINT}")
    if applied is None:
        return None  # nothing applied yet (a new host): any store that can vouch for itself
    if snapshot.epoch == applied.epoch:
        return _same_epoch(applied, snapshot, head_revision, head_id)
    if snapshot.epoch in left:
        return (f"the store went back to epoch {snapshot.epoch}, which this host left for {applied.epoch}: Redis "
                f"was restored from an older save; {RECOVER_HINT}")
    origin = snapshot.origin
    if origin is not None and origin.how == "recover":
        return None
    if origin is not None and origin.continues_from is not None and _same_point(origin.continues_from, applied):
        return None
    made = f"made by {origin.how}" if origin is not None else "made without an origin (by an older controller)"
    base = f" continuing from {origin.continues_from}" if origin is not None and origin.continues_from else ""
    return (f"the store holds a new epoch {snapshot.epoch} ({made}{base}) that does not continue from what this host "
            f"applied ({applied}); {RECOVER_HINT}")


def _same_point(point: Point, applied: Point) -> bool:
    return (point.epoch, point.revision) == (applied.epoch, applied.revision) and (
        applied.id is None or point.id == applied.id)


def _went_back(applied: Point, snapshot: Snapshot) -> str:
    return (f"the store went back in time: it is at revision {snapshot.revision} of epoch {snapshot.epoch}, this "
            f"host applied revision {applied.revision} (Redis restarted from an older save, or failed over to a "
            f"replica that lagged); serving what it has. {RECOVER_HINT}")


def _same_epoch(applied: Point, snapshot: Snapshot, head_revision: int, head_id: str) -> str | None:
    if head_revision < applied.revision:
        return _went_back(applied, snapshot)
    if applied.id is None:
        return None  # applied before the chain: revisions are all it can compare
    if head_revision == applied.revision:
        if head_id == applied.id:
            return None
        return (f"the store's revision {head_revision} is change {head_id}, but this host applied change "
                f"{applied.id} at that revision: the store was restored from an older save and took other changes "
                f"since; {RECOVER_HINT}")
    logged = dict(snapshot.log)
    if applied.revision in logged:
        if logged[applied.revision] == applied.id:
            return None
        return (f"the store's history went another way: its revision {applied.revision} is change "
                f"{logged[applied.revision]}, this host applied {applied.id} (Redis was restored from an older save "
                f"and took {head_revision - applied.revision} change(s) past it); {RECOVER_HINT}")
    if snapshot.log and applied.revision < snapshot.log[0][0]:
        return None  # older than the log reaches: nothing to compare (docs/reliability.md, the log's reach)
    return (f"the store's history does not hold revision {applied.revision} that this host applied (its log starts "
            f"at {snapshot.log[0][0] if snapshot.log else '-'}); {RECOVER_HINT}")


def snapshot_is_news(applied: Point | None, snapshot: Snapshot) -> bool:
    """False when the snapshot is exactly what the agent applied (the event that made it look was stale)."""
    if snapshot.epoch is None or applied is None:
        return True
    head_id = snapshot.head[1] if snapshot.head is not None else None
    return (snapshot.epoch, snapshot.revision, head_id) != (applied.epoch, applied.revision, applied.id)
