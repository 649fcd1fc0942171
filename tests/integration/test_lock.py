"""The deploy lock on a real Redis: one holder, expiry, renewal, re-entry, force."""

from __future__ import annotations

import threading
import time

import pytest

from sync_agent.control.lock import DeployLock
from sync_agent.errors import LockHeld

pytestmark = pytest.mark.integration


def test_two_holders_racing_get_exactly_one_lock(fresh_redis):
    winners: list[str] = []
    losers: list[str] = []
    start = threading.Barrier(8)

    def contend(i: int) -> None:
        lock = DeployLock(fresh_redis.client(), "ff")
        start.wait()
        try:
            lock.acquire(f"holder {i}")
            winners.append(f"holder {i}")
        except LockHeld as err:
            losers.append(err.holder)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert losers == winners * 7, "every loser is told who holds it"


def test_lock_held_message_names_the_holder_and_what_to_do(fresh_redis):
    lock = DeployLock(fresh_redis.client(), "ff")
    lock.acquire("rollout by alice@ops pid 42")
    with pytest.raises(LockHeld) as caught:
        lock.acquire("rollout by bob@ops pid 7")
    assert "alice@ops" in str(caught.value) and "--force" in str(caught.value)


def test_a_dead_holders_lock_expires(fresh_redis):
    lock = DeployLock(fresh_redis.client(), "ff", ttl=0.3)
    lock.acquire("dead holder")
    time.sleep(0.5)
    assert lock.acquire("next holder")
    assert lock.info().holder == "next holder"


def test_a_held_lock_is_renewed_past_its_ttl(fresh_redis):
    lock = DeployLock(fresh_redis.client(), "ff", ttl=0.3)
    with lock.held("long rollout"):
        time.sleep(1.0)
        with pytest.raises(LockHeld):
            DeployLock(fresh_redis.client(), "ff").acquire("impatient")
    assert lock.info().holder == "", "released on the way out"


def test_reentry_with_the_hold_succeeds_without_waiting(fresh_redis):
    lock = DeployLock(fresh_redis.client(), "ff")
    with lock.held("rollout") as hold, lock.held("its prune", hold) as inner:
        assert inner is hold
        assert lock.info().holder == "rollout"
    assert lock.info().holder == ""


def test_force_breaks_the_lock_and_reports_the_old_holder(fresh_redis, caplog):
    lock = DeployLock(fresh_redis.client(), "ff")
    old = lock.acquire("stuck rollout")
    token, previous = lock.force("operator")
    assert previous == "stuck rollout" and token != old
    assert "broke the deploy lock held by stuck rollout" in caplog.text
    assert not lock.release(old), "the old token no longer releases it"
