"""The agent's applied state, without Redis: what events and snapshots do to epoch, revision, data and the
reported state, in the order the agent meets them."""

from __future__ import annotations

import pytest

from sync_agent.host.decisions import Verdict
from sync_agent.host.state import EMPTY_STORE_ERROR, AppliedState, Batch
from sync_agent.protocol import DataChange, Desired, Message
from sync_agent.snapshot import Origin, Point, Snapshot

pytestmark = pytest.mark.unit


def cid(revision: int) -> str:
    """The id these tests give the change of a revision."""
    return f"{revision:016x}"


def data_set(epoch: str, revision: int, key: str, value: object) -> Message:
    return Message("data", epoch, revision, cid(revision), cid(revision - 1), data=DataChange(key, "set", value))


def release(epoch: str, revision: int, fleet: str, switch_at: int | None = None) -> Message:
    return Message("release", epoch, revision, cid(revision), cid(revision - 1), desired=Desired(fleet=fleet),
                   switch_at=switch_at)


def snap(epoch: str | None, revision: int, data: dict[str, object] | None = None, fleet: str | None = None,
         **extra: object) -> Snapshot:
    head = (revision, cid(revision)) if epoch is not None else None
    return Snapshot(epoch, revision, data or {}, Desired(fleet=fleet), head=head, log=(head,) if head else (),
                    **extra)  # type: ignore[arg-type]


def synced(epoch: str = "e1", revision: int = 5, **data: object) -> AppliedState:
    state = AppliedState("web1")
    state.apply_snapshot(snap(epoch, revision, dict(data), "rel-a"), Batch(), "connected")
    return state


def test_an_agent_is_degraded_until_its_first_snapshot_then_ready() -> None:
    state = AppliedState("web1")
    assert state.state == "degraded"
    batch = Batch()
    state.apply_snapshot(snap("e1", 5, {"flag": True}, "rel-a"), batch, "connected")
    assert (state.state, state.point, state.data) == ("ready", Point("e1", 5, cid(5)), {"flag": True})
    assert batch.resynced and batch.data and batch.release and batch.switch_at is None


def test_the_next_revisions_apply_in_order_and_say_what_to_write() -> None:
    state = synced()
    batch = Batch()
    for message in (data_set("e1", 6, "banner", "hi"), release("e1", 7, "rel-b", switch_at=123)):
        assert state.judge(message, batch) is Verdict.APPLY
        state.apply_message(message, batch)
    assert (state.revision, state.data, state.desired.target_for("web1")) == (7, {"banner": "hi"}, "rel-b")
    assert state.change_id == cid(7) and state.known[6] == cid(6)
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
    assert not state.is_news(snap("e1", 5))
    newer = snap("e2", 1, {"new": 1}, "rel-c", origin=Origin("recover"))
    assert state.is_news(newer)
    assert state.apply_snapshot(newer, Batch(), "epoch changed")
    assert (state.epoch, state.revision, state.data, state.desired.fleet) == ("e2", 1, {"new": 1}, "rel-c")
    assert state.left == ["e1"], "the epoch left is remembered, never followed back"


def test_an_empty_store_keeps_the_data_and_the_applied_point_until_a_recovery() -> None:
    state = synced(flag=True)
    state.apply_snapshot(Snapshot(None, 0), Batch(), "reconcile")
    assert state.state == "degraded" and state.errors["store"] == EMPTY_STORE_ERROR
    assert state.data == {"flag": True}, "an empty store must not wipe what the host serves"
    assert state.point == Point("e1", 5, cid(5)), "an empty store must not make the host forget what it applied"
    batch = Batch()
    assert not state.apply_snapshot(snap("e9", 1, {"flag": False}, origin=Origin("init")), batch, "reconcile")
    assert state.data == {"flag": True} and "does not continue from" in state.errors["history"]
    assert not (batch.data or batch.release or batch.resynced), "a refused snapshot writes nothing"
    assert state.apply_snapshot(snap("e9", 1, {"flag": False}, origin=Origin("recover")), Batch(), "reconcile")
    assert state.state == "ready" and state.data == {"flag": False} and not state.errors


def test_a_store_gone_back_in_time_is_refused_and_what_is_served_stays() -> None:
    state = synced(flag=True)
    assert not state.apply_snapshot(snap("e1", 3, {"flag": False}), Batch(), "reconcile")
    assert state.state == "degraded" and "went back in time" in state.error_text()
    assert (state.point, state.data) == (Point("e1", 5, cid(5)), {"flag": True})


def test_a_restart_starts_from_the_point_kept_on_disk() -> None:
    state = AppliedState("web1")
    state.restore(Point("e1", 5, cid(5)), ["e0"])
    assert state.acked_point == Point("e1", 5, cid(5))
    assert not state.apply_snapshot(snap("e1", 2), Batch(), "connected"), "an older save, after a restart"
    assert not state.apply_snapshot(snap("e0", 9, origin=Origin("recover")), Batch(), "connected")
    assert state.apply_snapshot(snap("e1", 5), Batch(), "connected") and state.state == "ready"


def test_a_snapshot_with_bad_keys_applies_the_rest_and_names_them() -> None:
    state = AppliedState("web1")
    state.apply_snapshot(snap("e1", 2, {"good": 1}, bad_keys=("bad\udcff",)), Batch(), "connected")
    assert state.data == {"good": 1} and state.state == "degraded"
    assert "skipped 1 key(s)" in state.error_text()


def test_errors_are_reported_most_important_first_and_only_some_degrade() -> None:
    state = synced()
    state.errors.update({"message": "skipped a bad message", "template": "env.js.j2 failed"})
    assert state.state == "ready"
    state.errors["write"] = "cannot write data.json"
    assert state.state == "degraded"
    assert state.error_text() == "cannot write data.json; env.js.j2 failed; skipped a bad message"
