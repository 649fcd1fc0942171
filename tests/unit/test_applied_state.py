"""The agent's applied state, without Redis: what events and snapshots do to epoch, revision, data and the
reported state, in the order the agent meets them."""

from __future__ import annotations

import pytest

from sync_agent.host.decisions import Verdict
from sync_agent.host.state import EMPTY_STORE_ERROR, AppliedState, Batch
from sync_agent.protocol import DataChange, Desired, Message
from sync_agent.snapshot import Snapshot

pytestmark = pytest.mark.unit


def data_set(epoch: str, revision: int, key: str, value: object) -> Message:
    return Message("data", epoch, revision, data=DataChange(key, "set", value))


def release(epoch: str, revision: int, fleet: str, switch_at: int | None = None) -> Message:
    return Message("release", epoch, revision, desired=Desired(fleet=fleet), switch_at=switch_at)


def synced(epoch: str = "e1", revision: int = 5, **data: object) -> AppliedState:
    state = AppliedState("web1")
    state.apply_snapshot(Snapshot(epoch, revision, dict(data), Desired(fleet="rel-a")), Batch(), "connected")
    return state


def test_an_agent_is_degraded_until_its_first_snapshot_then_ready() -> None:
    state = AppliedState("web1")
    assert state.state == "degraded"
    batch = Batch()
    state.apply_snapshot(Snapshot("e1", 5, {"flag": True}, Desired(fleet="rel-a")), batch, "connected")
    assert (state.state, state.epoch, state.revision, state.data) == ("ready", "e1", 5, {"flag": True})
    assert batch.resynced and batch.data and batch.release and batch.switch_at is None


def test_the_next_revisions_apply_in_order_and_say_what_to_write() -> None:
    state = synced()
    batch = Batch()
    for message in (data_set("e1", 6, "banner", "hi"), release("e1", 7, "rel-b", switch_at=123)):
        assert state.judge(message, batch) is Verdict.APPLY
        state.apply_message(message, batch)
    assert (state.revision, state.data, state.desired.target_for("web1")) == (7, {"banner": "hi"}, "rel-b")
    assert (batch.applied, batch.first, batch.data, batch.release, batch.switch_at) == (2, 6, True, True, 123)


def test_a_gap_a_new_epoch_and_a_duplicate_are_judged_from_the_applied_revision() -> None:
    state = synced()
    assert state.judge(data_set("e1", 5, "k", 1), Batch()) is Verdict.DUPLICATE
    assert state.judge(data_set("e1", 8, "k", 1), Batch()) is Verdict.RESYNC
    assert state.judge(data_set("e2", 1, "k", 1), Batch()) is Verdict.RESYNC
    assert state.judge(data_set("e2", 1, "k", 1), Batch(snapshot_read=True)) is Verdict.IGNORE
    assert state.revision == 5 and state.data == {}


def test_a_snapshot_replaces_the_data_and_the_one_already_applied_is_no_news() -> None:
    state = synced(old="x")
    assert not state.is_news(Snapshot("e1", 5))
    newer = Snapshot("e2", 1, {"new": 1}, Desired(fleet="rel-c"))
    assert state.is_news(newer)
    state.apply_snapshot(newer, Batch(), "epoch changed")
    assert (state.epoch, state.revision, state.data, state.desired.fleet) == ("e2", 1, {"new": 1}, "rel-c")


def test_an_empty_store_keeps_the_data_served_and_reports_degraded_until_it_has_data_again() -> None:
    state = synced(flag=True)
    state.apply_snapshot(Snapshot(None, 0), Batch(), "reconcile")
    assert state.state == "degraded" and state.errors["store"] == EMPTY_STORE_ERROR
    assert state.data == {"flag": True}, "an empty store must not wipe what the host serves"
    assert (state.epoch, state.revision) == (None, 0)
    state.apply_snapshot(Snapshot("e9", 3, {"flag": False}), Batch(), "reconcile")
    assert state.state == "ready" and "store" not in state.errors and state.data == {"flag": False}


def test_a_snapshot_with_bad_keys_applies_the_rest_and_names_them() -> None:
    state = AppliedState("web1")
    state.apply_snapshot(Snapshot("e1", 2, {"good": 1}, bad_keys=("bad\udcff",)), Batch(), "connected")
    assert state.data == {"good": 1} and state.state == "degraded"
    assert "skipped 1 key(s)" in state.error_text()


def test_errors_are_reported_most_important_first_and_only_some_degrade() -> None:
    state = synced()
    state.errors.update({"message": "skipped a bad message", "template": "env.js.j2 failed"})
    assert state.state == "ready"
    state.errors["write"] = "cannot write data.json"
    assert state.state == "degraded"
    assert state.error_text() == "cannot write data.json; env.js.j2 failed; skipped a bad message"
