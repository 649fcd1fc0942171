"""The agent's verdicts, without Redis: on events (docs/protocol.md, "Epoch and revision") and on snapshots
(docs/protocol.md, "The change chain")."""

from __future__ import annotations

import pytest

from sync_agent.host.decisions import Verdict, judge_event, judge_snapshot, snapshot_is_news
from sync_agent.protocol import DataChange, Message
from sync_agent.snapshot import Origin, Point, Snapshot

pytestmark = pytest.mark.unit

APPLIED = Point("e1", 5, "0000000000000005")
KNOWN = {4: "0000000000000004", 5: "0000000000000005"}


def event(epoch: str, revision: int, change_id: str | None = None, parent: str | None = None) -> Message:
    if change_id is None:
        change_id = f"{revision:016x}"
    if parent is None:
        parent = f"{revision - 1:016x}"
    return Message("data", epoch, revision, change_id, parent, data=DataChange("k", "set", 1))


@pytest.mark.parametrize(("message", "expected"), [
    (event("e1", 6), Verdict.APPLY),  # the next change, chained onto what was applied
    (event("e1", 5), Verdict.DUPLICATE),  # already applied
    (event("e1", 4), Verdict.DUPLICATE),  # older: in the snapshot already
    (event("e1", 2), Verdict.DUPLICATE),  # older than what the agent remembers: nothing to compare
    (event("e1", 8), Verdict.RESYNC),  # a gap
    (event("e2", 1), Verdict.RESYNC),  # another epoch
    (event("e1", 6, parent="00000000000000aa"), Verdict.RESYNC),  # does not chain on: another branch
    (event("e1", 5, change_id="00000000000000bb"), Verdict.RESYNC),  # the applied revision with another id
    (Message("data", "e1", 6, None, None, data=DataChange("k", "set", 1)), Verdict.RESYNC),  # no id: no chain
])
def test_an_event_is_applied_skipped_or_resynced_on(message, expected):
    assert judge_event(APPLIED, KNOWN, message, batch_read_snapshot=False) is expected


@pytest.mark.parametrize("message", [event("e1", 8), event("forged", 1), event("forged", 10**9),
                                     event("e1", 5, change_id="00000000000000bb")])
def test_a_batch_that_read_the_snapshot_ignores_what_would_read_it_again(message):
    assert judge_event(APPLIED, KNOWN, message, batch_read_snapshot=True) is Verdict.IGNORE


def test_what_follows_on_applies_also_after_the_batch_read_the_snapshot():
    assert judge_event(APPLIED, KNOWN, event("e1", 6), batch_read_snapshot=True) is Verdict.APPLY
    assert judge_event(APPLIED, KNOWN, event("e1", 4), batch_read_snapshot=True) is Verdict.DUPLICATE


def test_an_agent_that_applied_nothing_resyncs_on_any_event():
    assert judge_event(None, {}, event("e1", 1), batch_read_snapshot=False) is Verdict.RESYNC


def test_the_first_change_on_a_store_from_before_the_chain_chains_onto_an_agent_from_before_it():
    legacy = Point("e1", 5, None)
    assert judge_event(legacy, {}, event("e1", 6, parent=""), batch_read_snapshot=False) is Verdict.APPLY


def chained(revision: int, head_id: str | None = None, epoch: str = "e1", log_from: int = 1,
            origin: Origin | None = None) -> Snapshot:
    log = tuple((r, f"{r:016x}") for r in range(log_from, revision))
    head = (revision, head_id or f"{revision:016x}")
    return Snapshot(epoch, revision, head=head, log=(*log, head), origin=origin)


@pytest.mark.parametrize("snapshot", [
    chained(5),  # exactly what was applied
    chained(9),  # later changes of the same history
    chained(2000, log_from=1000),  # later than the log reaches back: nothing to compare against
    chained(1, epoch="e2", origin=Origin("recover", Point("e1", 3, "0000000000000003"))),  # an explicit recovery
    chained(1, epoch="e2", origin=Origin("import", APPLIED)),  # a new epoch that continues from what was applied
])
def test_a_snapshot_whose_history_holds_what_was_applied_is_followed(snapshot):
    assert judge_snapshot(APPLIED, [], snapshot) is None


@pytest.mark.parametrize(("snapshot", "reason"), [
    (chained(4), "went back in time"),  # an older save
    (chained(5, head_id="00000000000000cc"), "this host applied change"),  # same revision, another change
    (Snapshot("e1", 9, head=(9, "0000000000000009"), log=((5, "00000000000000cc"), (9, "0000000000000009"))),
     "went another way"),  # restored, then took more changes than the agent had seen
    (Snapshot("e1", 7, head=(6, "0000000000000006"), log=((6, "0000000000000006"),)),
     "a controller that keeps no chain"),  # an older controller bumped the revision past the head
    (Snapshot("e1", 9), "has no change chain"),  # written only by an older controller
    (chained(1, epoch="e2", origin=Origin("init")), "does not continue from"),  # a new store made by accident
    (chained(1, epoch="e2"), "without an origin"),  # an epoch an older controller made
    (chained(30, epoch="e0", origin=Origin("recover")), "which this host left"),  # a save from before a recovery
])
def test_a_snapshot_whose_history_does_not_hold_what_was_applied_is_refused_with_the_reason(snapshot, reason):
    refusal = judge_snapshot(APPLIED, ["e0"], snapshot)
    assert refusal is not None and reason in refusal and "fab recover" in refusal


def test_a_new_host_follows_any_store_that_vouches_for_itself_but_not_a_foreign_one():
    assert judge_snapshot(None, [], chained(3)) is None
    assert judge_snapshot(None, [], Snapshot("e1", 9)) is None  # from before the chain: the upgrade's first step
    foreign = Snapshot("e1", 7, head=(6, "0000000000000006"))
    assert "keeps no chain" in (judge_snapshot(None, [], foreign) or "")


def test_an_agent_from_before_the_chain_compares_revisions_only():
    legacy = Point("e1", 5, None)
    assert judge_snapshot(legacy, [], Snapshot("e1", 5)) is None
    assert judge_snapshot(legacy, [], chained(7, log_from=6)) is None  # the store adopted by the upgrade
    assert "went back in time" in (judge_snapshot(legacy, [], Snapshot("e1", 3)) or "")


def test_a_snapshot_equal_to_what_was_applied_is_no_news():
    assert not snapshot_is_news(APPLIED, chained(5))
    assert snapshot_is_news(APPLIED, chained(6))
    assert snapshot_is_news(APPLIED, chained(5, head_id="00000000000000cc"))
    assert snapshot_is_news(APPLIED, chained(5, epoch="e2"))
    assert snapshot_is_news(APPLIED, Snapshot(None, 0))  # an empty store is news: it must be reported
