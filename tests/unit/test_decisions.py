"""The agent's verdicts on events, without Redis: the table of docs/protocol.md, "Epoch and revision"."""

from __future__ import annotations

import pytest

from sync_agent.host.decisions import Verdict, judge_event, snapshot_is_news

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("event", "expected"), [
    (("e1", 6), Verdict.APPLY),  # the next revision
    (("e1", 5), Verdict.DUPLICATE),  # already applied
    (("e1", 2), Verdict.DUPLICATE),  # older: in the snapshot already
    (("e1", 8), Verdict.RESYNC),  # a gap
    (("e2", 1), Verdict.RESYNC),  # another epoch (Redis lost its data, or failed over)
])
def test_an_event_is_applied_skipped_or_resynced_on(event, expected):
    assert judge_event("e1", 5, *event, batch_read_snapshot=False) is expected


@pytest.mark.parametrize("event", [("e1", 8), ("forged", 1), ("forged", 10**9)])
def test_a_batch_that_read_the_snapshot_ignores_what_would_read_it_again(event):
    assert judge_event("e1", 5, *event, batch_read_snapshot=True) is Verdict.IGNORE


def test_what_follows_on_applies_also_after_the_batch_read_the_snapshot():
    assert judge_event("e1", 5, "e1", 6, batch_read_snapshot=True) is Verdict.APPLY
    assert judge_event("e1", 5, "e1", 4, batch_read_snapshot=True) is Verdict.DUPLICATE


def test_an_agent_that_applied_nothing_resyncs_on_any_event():
    assert judge_event(None, 0, "e1", 1, batch_read_snapshot=False) is Verdict.RESYNC


def test_a_snapshot_equal_to_what_was_applied_is_no_news():
    assert not snapshot_is_news("e1", 5, "e1", 5)
    assert snapshot_is_news("e1", 5, "e1", 6)
    assert snapshot_is_news("e1", 5, "e2", 5)
    assert snapshot_is_news("e1", 5, None, 0)  # an empty store is news: it must be reported
