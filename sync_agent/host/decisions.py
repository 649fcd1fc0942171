"""The agent's pure decisions: what to do with an event, given what it applied. No I/O, so they are unit-tested
without Redis (tests/unit/test_decisions.py); service.py carries them out.

docs/protocol.md, "Epoch and revision", states the same rules as a table.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """What an event calls for."""

    APPLY = "apply"  # the next revision of the epoch held: apply it
    DUPLICATE = "duplicate"  # a revision already applied (or contained in a snapshot): skip it
    RESYNC = "resync"  # a gap, or another epoch: read the snapshot
    IGNORE = "ignore"  # would call for a resync, but this batch read the snapshot already: stale or forged


def judge_event(epoch: str | None, revision: int, event_epoch: str, event_revision: int,
                batch_read_snapshot: bool) -> Verdict:
    """The verdict on an event of (event_epoch, event_revision) for an agent that applied (epoch, revision).

    Everything in a batch arrived before any snapshot the batch read, so that snapshot holds every real change of
    the batch: an event that still does not follow on is stale or forged, and a batch reads the snapshot at most
    once however many such events it carries (a flood of forged events cannot turn into a resync storm)."""
    if event_epoch == epoch and event_revision <= revision:
        return Verdict.DUPLICATE
    if event_epoch == epoch and event_revision == revision + 1:
        return Verdict.APPLY
    if batch_read_snapshot:
        return Verdict.IGNORE
    return Verdict.RESYNC


def snapshot_is_news(epoch: str | None, revision: int, snapshot_epoch: str | None, snapshot_revision: int) -> bool:
    """False when the snapshot is exactly what the agent applied (the event that made it look was stale)."""
    return snapshot_epoch is None or (snapshot_epoch, snapshot_revision) != (epoch, revision)
