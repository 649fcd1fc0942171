"""Release requests on a real Redis: made exactly once through lost replies, fenced by the deploy lock, recorded.

A LossyProxy between the publisher and Redis loses one reply (or one request) the way a network does; the store
must end exactly one step on, or say plainly that nothing was made, or that it cannot know and how to check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from sync_agent.control.lock import DeployLock
from sync_agent.control.records import RolloutRecord
from sync_agent.control.store import Store
from sync_agent.errors import (
    EXIT_UNKNOWN,
    LockHeld,
    LockLost,
    OutcomeUnknown,
    RolloutUnfinished,
    StoreUnavailable,
)
from sync_agent.protocol import Desired
from tests.servers import LossyProxy, is_script_call, new_store

pytestmark = pytest.mark.integration

NS = "ff"


def through(proxy: LossyProxy, **options: object) -> Store:
    client = redis.Redis(host=proxy.address, port=proxy.port, decode_responses=True, socket_timeout=5,
                         **options)  # type: ignore[arg-type]
    return Store(client, NS)


@pytest.fixture
def history(fresh_redis) -> Store:
    """A store whose fleet went A → B → C (C live)."""
    store = new_store(fresh_redis.client(), NS)
    for release in ("A", "B", "C"):
        store.activate(release)
    return store


@pytest.fixture
def lossy(fresh_redis):
    with LossyProxy(fresh_redis.host, fresh_redis.port) as proxy:
        yield proxy


def test_a_rollback_whose_reply_is_lost_moves_the_fleet_exactly_one_step(history: Store, lossy: LossyProxy):
    before = history.snapshot().revision
    lossy.lose_reply(is_script_call(b"rollback"))
    change = through(lossy).rollback()  # redis-py sends it again; the script answers with the first outcome
    assert lossy.lost, "the proxy lost no reply: the test proved nothing"
    assert history.desired().fleet == "B" and history.history().position == 1
    assert change.revision == before + 1 == history.snapshot().revision
    rollbacks = [e for e in history.changes() if e.what == "rollback"]
    assert [(e.detail["release"], e.detail["id"]) for e in rollbacks] == [("B", change.id)]


def test_a_request_lost_every_time_is_given_up_and_never_made_later(history: Store, lossy: LossyProxy):
    before = history.snapshot().revision
    lossy.lose_command(is_script_call(b"rollback"), times=10)  # redis-py's tries and more
    with pytest.raises(StoreUnavailable, match="was not made, nothing was changed") as refused:
        through(lossy).rollback()
    request = str(refused.value).split("request ")[1].split(" ")[0]
    assert history.desired().fleet == "C" and history.snapshot().revision == before
    # the same request arriving late (a copy still in flight, a user's retry with its id) is never made
    with pytest.raises(StoreUnavailable, match="given up by its caller"):
        history.rollback(request=request)
    assert history.desired().fleet == "C" and history.snapshot().revision == before


def test_a_lost_reply_with_redis_gone_is_unknown_and_says_how_to_check(history: Store, fresh_redis):
    proxy = LossyProxy(fresh_redis.host, fresh_redis.port)
    store = through(proxy)
    proxy.lose_reply(is_script_call(b"rollback"), vanish=True)  # and no connection gets through afterwards
    try:
        with pytest.raises(OutcomeUnknown) as unknown:
            store.rollback()
    finally:
        proxy.close()
    assert unknown.value.exit_code == EXIT_UNKNOWN
    assert "whether it was made is not known" in str(unknown.value) and "`fab log`" in str(unknown.value)
    # here it was made: the record of changes names the request, and retrying it with its id moves nothing
    assert unknown.value.request in [e.detail.get("id") for e in history.changes()]
    again = history.rollback(request=unknown.value.request)
    assert history.desired().fleet == "B" and again.id == unknown.value.request


def test_a_stale_holders_release_changes_are_refused_and_change_nothing(history: Store, fresh_redis):
    lock = DeployLock(fresh_redis.client(), NS)
    with lock.held("rollout of D by alice@ctl pid 1") as hold:
        lock.force("rollout of E by bob@ctl pid 2")  # `fab lock --force`, then a new holder
        before = history.snapshot()
        for change in (lambda: history.activate("D", token=hold.token),
                       lambda: history.rollback(token=hold.token),
                       lambda: history.restore(Desired("A"), history.history(), token=hold.token),
                       lambda: history.forget_releases(["A"], token=hold.token)):
            with pytest.raises(LockLost, match="now held by rollout of E by bob@ctl"):
                change()
        with pytest.raises(LockHeld, match=r"held by rollout of E by bob@ctl pid 2 \(expires in 30s unless"):
            history.activate("D")  # holding no lock while another operation does
        after = history.snapshot()
        assert (after.revision, history.desired().fleet) == (before.revision, "C")


def test_a_broken_lock_is_noticed_by_its_renewer_and_stops_the_wait(history: Store, fresh_redis):
    lock = DeployLock(fresh_redis.client(), NS, ttl=0.6)
    with lock.held("rollout of D") as hold:
        lock.break_lock("lock --force by carol@ctl")
        deadline = time.monotonic() + 5
        while not hold.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LockLost, match="expired or was broken and is free"):
            hold.check()
    broken = history.changes()[0]
    assert (broken.what, broken.detail["holder"]) == ("lock broken", "rollout of D")
    assert broken.who and broken.at is not None


def test_data_changes_take_no_lock_and_are_recorded_without_their_values(history: Store, fresh_redis):
    lock = DeployLock(fresh_redis.client(), NS)
    with lock.held("rollout of D"):
        history.data_set("flag", '"secret value"')  # a flag flip never waits behind a rollout
        history.data_del("flag")
    entries = history.changes(2)
    assert [(e.what, e.detail["key"]) for e in entries] == [("data del", "flag"), ("data set", "flag")]
    assert all("secret value" not in json.dumps(e.to_json()) for e in entries)
    assert "during" not in entries[0].detail, "a data change is part of no locked operation"


def test_an_unfinished_rollout_is_recorded_refuses_another_and_a_recovery_ends_it(history: Store, fresh_redis):
    lock = DeployLock(fresh_redis.client(), NS)
    desired, hist = history.desired(), history.history()
    with lock.held("rollout of D by alice@ctl pid 1") as hold:
        record = RolloutRecord("0123456789abcdef", "D", "canary", {"fleet": "C", "overrides": {},
                                                                     "history": hist.releases, "position": 2})
        history.begin_rollout(record, hold.token)
        history.override("D", ["web1"], token=hold.token)
        with pytest.raises(RolloutUnfinished, match=r"unfinished rollout of D .*phase canary.*puts C back"):
            history.begin_rollout(record, hold.token)
    found = history.unfinished_rollout()
    assert found is not None and found.back_to_state == (desired, hist)
    assert found.during == "rollout of D by alice@ctl pid 1"
    history.seed("recover", None, {}, "C", hist.releases, replace=True)
    assert history.unfinished_rollout() is None


def test_sync_agent_log_prints_the_record_newest_first(publisher_env):
    sync_agent = str(Path(sys.executable).with_name("sync-agent"))
    for value in ("1", "2"):
        subprocess.run([sync_agent, "data", "set", "n", value], env=publisher_env, check=True, timeout=30)
    shown = subprocess.run([sync_agent, "log", "--json", "--limit", "2"], env=publisher_env, capture_output=True,
                           text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    entries = json.loads(shown.stdout)
    assert [(e["what"], e["key"], e["rev"]) for e in entries] == [("data set", "n", 2), ("data set", "n", 1)]
    assert all(e["who"] and e["when"].endswith("+00:00") for e in entries)
    text = subprocess.run([sync_agent, "log"], env=publisher_env, capture_output=True, text=True, timeout=30)
    assert text.stdout.splitlines()[0].split()[2:5] == ["data", "set", "n"]
