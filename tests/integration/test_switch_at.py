"""Release events carry switch_at (docs/protocol.md): agents rename `current` at that deadline, not on receipt.

Real agents against a real Redis. The agents and Redis share this machine's clock, so an agent's
switched_at_ns and a switch_at on Redis' clock compare directly; CLOCK_SLACK_NS allows for the agent's
estimate of its offset to Redis (the midpoint of a loopback round trip).
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import redis

from tests.servers import new_store

from .conftest import KEYS, NAMESPACE, chained_change, eventually, stage

pytestmark = pytest.mark.integration

CLOCK_SLACK_NS = 2_000_000
WINDOW_NS = 50_000_000  # after the deadline: far less than the margin the tests publish with


def redis_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def publish_release(client: redis.Redis, release: str, **extra: object) -> int:
    """Do what lua/release.lua does, by hand: store the fleet release, move the chain on, publish the event with
    `extra` fields (without switch_at: switch at once). Returns the revision."""
    client.hset(KEYS.desired, "fleet", release)
    return chained_change(client, {"type": "release", "desired": {"fleet": release, "overrides": {}}, **extra})


def wait_switched(fleet, agent, release: str, revision: int, timeout: float = 10.0) -> dict[str, str]:
    """The acknowledgement of a switch: the revision and the release (a heartbeat during the wait for the
    deadline may already show the revision with the old release, as fab status shows a lagging host)."""
    return eventually(lambda: (status := fleet.status(agent.host)).get("release") == release
                      and int(status.get("revision", "0")) >= revision and status,
                      timeout, what=f"{agent.host} acknowledged {release} at revision {revision}")


def two_agents_on_release_one(fleet, builds):
    agents = [fleet.agent("web1"), fleet.agent("web2")]
    one, two = builds("one"), builds("two")
    ids = {}
    for agent in agents:
        ids = {"one": stage(agent.root, one), "two": stage(agent.root, two)}
    change = fleet.store.activate(ids["one"])
    for agent in agents:
        fleet.wait_revision(agent, change.revision)
        assert agent.current() == ids["one"]
    return agents, ids


def test_agents_switch_together_at_the_published_deadline_and_never_before(fleet, builds):
    agents, ids = two_agents_on_release_one(fleet, builds)
    seen_early: list[str] = []
    stop = threading.Event()
    pubsub = fleet.admin.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.events)
    pubsub.get_message(timeout=1)

    def watch(deadline_ns: list[int]) -> None:
        """Every read that finds the new release must have started at the deadline or after it."""
        while not stop.is_set():
            started = time.time_ns()
            for agent in agents:
                if os.readlink(agent.root / "live" / "current").endswith(ids["two"]) and deadline_ns and \
                        started < deadline_ns[0] - CLOCK_SLACK_NS:
                    seen_early.append(f"{agent.host} served the new release {deadline_ns[0] - started} ns early")
            time.sleep(0.0005)

    deadline_ns: list[int] = []
    watcher = threading.Thread(target=watch, args=(deadline_ns,))
    watcher.start()
    try:
        change = new_store(fleet.admin, NAMESPACE, switch_margin_ms=400).activate(ids["two"])
        event = eventually(lambda: pubsub.get_message(timeout=0.1), what="the release event")
        deadline_ns.append(json.loads(event["data"])["switch_at"] * 1000)
        statuses = [wait_switched(fleet, agent, ids["two"], change.revision) for agent in agents]
    finally:
        stop.set()
        watcher.join()
        pubsub.close()
    switched = [int(status["switched_at_ns"]) for status in statuses]
    assert [agent.current() for agent in agents] == [ids["two"], ids["two"]]
    assert [status["release"] for status in statuses] == [ids["two"], ids["two"]]
    for at in switched:
        assert deadline_ns[0] - CLOCK_SLACK_NS <= at <= deadline_ns[0] + WINDOW_NS, (at - deadline_ns[0]) / 1e6
    assert seen_early == []


def test_a_deadline_already_passed_switches_at_once(fleet, builds):
    agents, ids = two_agents_on_release_one(fleet, builds)
    now_us = redis_time_us(fleet.admin)
    revision = publish_release(fleet.admin, ids["two"], switch_at=now_us - 10_000_000)  # ten seconds ago
    for agent in agents:
        status = wait_switched(fleet, agent, ids["two"], revision)
        assert agent.current() == ids["two"]
        assert now_us * 1000 <= int(status["switched_at_ns"])
        assert "past its switch_at: switching now" in agent.log()


def test_a_deadline_far_ahead_is_capped_with_a_warning(fleet, builds):
    (agent, _), ids = two_agents_on_release_one(fleet, builds)
    now_us = redis_time_us(fleet.admin)
    revision = publish_release(fleet.admin, ids["two"], switch_at=now_us + 3600 * 1_000_000)  # an hour ahead
    status = wait_switched(fleet, agent, ids["two"], revision, timeout=20)
    assert agent.current() == ids["two"]
    waited_s = (int(status["switched_at_ns"]) - now_us * 1000) / 1e9
    assert 4.9 <= waited_s < 60  # the 5 s cap, not the hour
    assert "(clock skew?); switching in 5s instead" in agent.log()


def test_a_release_event_without_switch_at_switches_at_once(fleet, builds):
    agents, ids = two_agents_on_release_one(fleet, builds)
    revision = publish_release(fleet.admin, ids["two"])
    for agent in agents:
        status = wait_switched(fleet, agent, ids["two"], revision)
        assert status["previous"] == ids["one"]
        assert (agent.current(), agent.previous()) == (ids["two"], ids["one"])
        assert "switch_at" not in agent.log()


def test_a_snapshot_switches_at_once_without_waiting_for_the_deadline(fleet, builds):
    (agent, other), ids = two_agents_on_release_one(fleet, builds)
    assert other.stop() == 0
    assert agent.stop() == 0
    now_us = redis_time_us(fleet.admin)
    change = new_store(fleet.admin, NAMESPACE, switch_margin_ms=4000).activate(ids["two"])  # published while down
    agent.start()
    status = wait_switched(fleet, agent, ids["two"], change.revision)
    assert agent.current() == ids["two"]
    assert int(status["switched_at_ns"]) < (now_us + 4_000_000) * 1000  # before the event's deadline
    assert "resync (connected)" in agent.log()


def test_a_malformed_switch_at_is_a_bad_message_and_the_host_converges_from_the_snapshot(fleet, builds):
    (agent, _), ids = two_agents_on_release_one(fleet, builds)
    publish_release(fleet.admin, ids["two"], switch_at="soon")
    eventually(lambda: "switch_at must be a positive integer" in agent.log(), what="the bad message logged")
    eventually(lambda: agent.current() == ids["two"], what="switched on a reconcile (1 s here)")
    assert "resync (reconcile" in agent.log()
