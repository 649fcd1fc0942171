"""The publisher's scripts against a real Redis: revisions, events, history, overrides."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from sync_agent.control.store import Store
from sync_agent.errors import ProtocolError, StoreEmpty, StoreExists, StoreForeign, UsageError
from sync_agent.protocol import LOG_LENGTH, Desired, parse_message
from tests.servers import new_store

pytestmark = pytest.mark.integration

NS = "ff"


@pytest.fixture
def store(fresh_redis) -> Store:
    return new_store(fresh_redis.client(), NS)


def subscribe(fresh_redis) -> redis.client.PubSub:
    pubsub = fresh_redis.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{NS}:events")
    pubsub.get_message(timeout=1)
    return pubsub


def drain(pubsub: redis.client.PubSub, count: int) -> list:
    messages = []
    while len(messages) < count:
        raw = pubsub.get_message(timeout=5)
        assert raw is not None, f"only {len(messages)} of {count} events arrived"
        if raw["type"] == "message":
            messages.append(parse_message(raw["data"]))
    return messages


def test_data_set_publishes_the_change_with_its_payload_and_revision(store, fresh_redis):
    pubsub = subscribe(fresh_redis)
    change = store.data_set("banner", '{"text": "hello", "on": true}')
    [event] = drain(pubsub, 1)
    assert (event.type, event.revision, event.epoch) == ("data", change.revision, change.epoch)
    assert event.data.key == "banner" and event.data.value == {"text": "hello", "on": True}
    assert store.data_get("banner") == {"text": "hello", "on": True}


def test_concurrent_publishers_get_strictly_increasing_revisions_and_lose_nothing(store, fresh_redis):
    pubsub = subscribe(fresh_redis)
    revisions: list[int] = []
    lock = threading.Lock()

    def publish(worker: int) -> None:
        own = new_store(fresh_redis.client(), NS)
        for i in range(100):
            change = own.data_set(f"k{worker}", json.dumps(i))
            with lock:
                revisions.append(change.revision)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(revisions) == list(range(1, 401))
    events = drain(pubsub, 400)
    assert [e.revision for e in events] == list(range(1, 401)), "events arrive in revision order, none missing"
    assert store.data_list() == {f"k{w}": 99 for w in range(4)}
    assert store.snapshot().revision == 400


def test_no_change_makes_an_epoch_only_init_does_and_only_once(fresh_redis):
    store = Store(fresh_redis.client(), NS)
    for change in (lambda: store.data_set("a", "1"), lambda: store.data_del("a"), lambda: store.activate("A")):
        with pytest.raises(StoreEmpty, match="fab recover"):
            change()
    assert fresh_redis.client().keys("*") == [], "a refused change writes nothing"
    made = store.init()
    assert (made.revision, store.snapshot().origin.how) == (0, "init")
    first, second = store.data_set("a", "1"), store.data_set("a", "2")
    assert first.epoch == second.epoch == made.epoch and (first.revision, second.revision) == (1, 2)
    with pytest.raises(StoreExists, match="already has epoch"):
        store.init()
    fresh_redis.client().flushall()  # Redis lost its data
    with pytest.raises(StoreEmpty):
        store.data_set("a", "3")


def test_every_change_is_chained_onto_the_one_before_and_the_log_keeps_the_recent_ones(store, fresh_redis):
    pubsub = subscribe(fresh_redis)
    changes = [store.data_set("a", str(n)) for n in range(3)] + [store.activate("A")]
    events = drain(pubsub, 4)
    init_id = store.snapshot().log[0][1]
    assert [e.parent for e in events] == [init_id] + [c.id for c in changes[:-1]]
    assert [e.id for e in events] == [c.id for c in changes]
    snapshot = store.snapshot()
    assert snapshot.head == (4, changes[-1].id)
    assert snapshot.log == ((0, init_id), *((c.revision, c.id) for c in changes))
    client = fresh_redis.client()
    for _ in range(LOG_LENGTH + 10):
        client.rpush(f"{NS}:log", "1:0000000000000001")  # fill it past its bound
    store.data_set("b", "1")
    assert client.llen(f"{NS}:log") == LOG_LENGTH and client.lindex(f"{NS}:log", -1).startswith("5:")


def test_a_revision_bumped_around_the_chain_is_foreign_and_no_change_builds_on_it(store, fresh_redis):
    store.data_set("a", "1")
    fresh_redis.client().incr(f"{NS}:rev")  # what a controller of an earlier version does
    with pytest.raises(StoreForeign, match="keeps no chain"):
        store.data_set("a", "2")
    with pytest.raises(StoreForeign, match="fab recover"):
        store.activate("A")
    assert store.data_get("a") == 1 and store.desired().fleet is None


def test_data_del_of_a_missing_key_changes_nothing(store):
    store.data_set("a", "1")
    assert store.data_del("nope").revision == 0
    assert store.data_del("a").revision == 2
    with pytest.raises(UsageError, match="no data key 'a'"):
        store.data_get("a")


@pytest.mark.parametrize("key", ["../etc", "a/b", ".hidden", "", "x" * 200])
def test_data_keys_outside_the_safe_charset_are_refused(store, key):
    with pytest.raises(ProtocolError):
        store.data_set(key, "1")
    assert store.data_list() == {}


def test_values_must_be_json_within_the_size_limit(store):
    with pytest.raises(ProtocolError, match="not valid JSON"):
        store.data_set("a", "on")
    with pytest.raises(ProtocolError, match="limit"):
        store.data_set("a", json.dumps("x" * 600_000))
    assert store.snapshot().revision == 0


def test_history_rollout_rollback_twice_goto_and_rollout_after_rollback(store):
    for release in ("A", "B", "C"):
        store.activate(release)
    assert store.history().releases == ["A", "B", "C"] and store.desired().fleet == "C"
    store.rollback()
    assert store.desired().fleet == "B" and store.history().rollback_target == "A"
    store.rollback()
    assert store.desired().fleet == "A"
    with pytest.raises(UsageError, match="no earlier release"):
        store.rollback()
    store.rollback(to="C")  # --to a release in history moves the position there
    assert store.desired().fleet == "C" and store.history().position == 2
    store.rollback(to="A")
    store.activate("D")  # a rollout drops anything ahead of the current position
    history = store.history()
    assert history.releases == ["A", "D"] and history.current == "D"


def test_per_host_overrides_move_only_those_hosts_until_a_fleet_rollout(store, fresh_redis):
    store.activate("A")
    pubsub = subscribe(fresh_redis)
    store.override("B", ["web1"])
    [event] = drain(pubsub, 1)
    assert event.desired == Desired(fleet="A", overrides={"web1": "B"})
    desired = store.desired()
    assert desired.target_for("web1") == "B" and desired.target_for("web2") == "A"
    assert store.history().releases == ["A"], "a canary does not touch the history"
    store.activate("B")
    assert store.desired() == Desired(fleet="B")


def test_release_events_carry_a_switch_at_deadline_of_redis_time_plus_the_margin(fresh_redis):
    client = fresh_redis.client()
    new_store(client, NS)  # its init publishes a new epoch's event: before we listen
    pubsub = subscribe(fresh_redis)
    seconds, micros = client.time()
    before_us = seconds * 1_000_000 + micros
    new_store(client, NS, switch_margin_ms=200).activate("A")
    new_store(client, NS).rollback(to="A")
    new_store(client, NS).data_set("k", "1")
    seconds, micros = client.time()
    after_us = seconds * 1_000_000 + micros
    activate, goto, data = drain(pubsub, 3)
    assert before_us + 200_000 <= activate.switch_at <= after_us + 200_000
    assert before_us + 50_000 <= goto.switch_at <= after_us + 50_000  # the default margin
    assert data.switch_at is None


def test_restore_puts_back_a_saved_state(store):
    store.activate("A")
    saved = (store.desired(), store.history())
    store.override("B", ["web1", "web2"])
    store.restore(*saved)
    assert store.desired() == Desired(fleet="A") and store.history() == saved[1]


def test_snapshot_reads_everything_in_one_transaction(store):
    store.data_set("flag", "true")
    change = store.activate("A")
    snap = store.snapshot()
    assert (snap.epoch, snap.revision) == (change.epoch, 2)
    assert snap.data == {"flag": True} and snap.desired.fleet == "A"


def test_release_metadata_is_kept_per_release(store):
    store.activate("A", {"label": "v1.0", "who": "ci@box", "when": "2026-01-01T00:00:00+00:00"})
    assert store.release_metadata()["A"]["label"] == "v1.0"
