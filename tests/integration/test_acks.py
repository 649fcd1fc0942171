"""Waiting for acknowledgements and reading the fleet's status, from the statuses agents write."""

from __future__ import annotations

import threading
import time

import pytest

from sync_agent.control.hoststatus import fleet_view, forget_replaced_statuses, wait_for_acks
from sync_agent.control.store import Store
from sync_agent.protocol import HostStatus
from tests.servers import new_store

pytestmark = pytest.mark.integration


def report(store: Store, host: str, release: str, revision: int, epoch: str, heartbeat: float = 5.0) -> None:
    """Write a status the way an agent does, with seen_at from Redis' clock."""
    status = HostStatus(release=release, revision=revision, epoch=epoch, state="ready",
                        seen_at=store.server_time(), heartbeat=heartbeat, pid=1)
    store.client.set(store.keys.host(host), status.to_json())


def test_wait_returns_once_every_host_acknowledged(fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    change = store.activate("B")

    def agents_ack_later() -> None:
        time.sleep(0.2)
        for host in ("web1", "web2"):
            report(store, host, "B", change.revision, change.epoch)

    threading.Thread(target=agents_ack_later).start()
    assert wait_for_acks(store, ["web1", "web2"], change.epoch, change.revision, "B", timeout=5) == {}


def test_wait_names_the_laggard_and_why(fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    old = store.activate("A")
    report(store, "web2", "A", old.revision, old.epoch)
    change = store.activate("B")
    report(store, "web1", "B", change.revision, change.epoch)
    laggards = wait_for_acks(store, ["web1", "web2", "web3"], change.epoch, change.revision, "B", timeout=0.3)
    assert set(laggards) == {"web2", "web3"}
    assert "serves A, not B" in laggards["web2"]
    assert "never reported" in laggards["web3"]


def test_fleet_view_flags_silent_and_lagging_hosts(fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    change = store.activate("B")
    report(store, "web1", "B", change.revision, change.epoch)
    report(store, "web2", "A", change.revision, change.epoch)
    report(store, "web3", "B", change.revision, change.epoch, heartbeat=0.05)
    time.sleep(0.3)  # web3 misses three heartbeats
    views = {v.host: v for v in fleet_view(store, ["web1", "web2", "web3", "web4"])}
    assert views["web1"].healthy
    assert views["web2"].lagging and "should serve B" in views["web2"].problem
    assert views["web3"].silent and "silent" in views["web3"].problem
    assert not views["web4"].healthy and "never reported" in views["web4"].problem


def test_an_agent_from_before_the_host_key_is_read_from_its_hash_which_goes_once_it_reports_on_the_key(fresh_redis):
    """A rolling upgrade: an old agent (UPGRADE_FROM) writes the hash NS:status:<host>; the controller reads it
    while the host has no NS:host:<host>, keeps it as long as it is all the host has, and deletes it once the
    upgraded agent reports on the key."""
    store = new_store(fresh_redis.client(), "ff")
    change = store.activate("B")
    old = HostStatus(release="B", revision=change.revision, epoch=change.epoch, state="ready",
                     seen_at=store.server_time(), pid=7)
    store.client.hset(store.keys.status("web1"), mapping={name: str(getattr(old, name))
                                                          for name in HostStatus.__dataclass_fields__})
    assert wait_for_acks(store, ["web1"], change.epoch, change.revision, "B", timeout=1) == {}
    assert fleet_view(store, ["web1"])[0].healthy
    assert forget_replaced_statuses(store, ["web1", "web2"]) == []
    report(store, "web1", "B", change.revision, change.epoch)
    assert forget_replaced_statuses(store, ["web1", "web2"]) == ["web1"]
    assert not store.client.exists(store.keys.status("web1"))
    assert fleet_view(store, ["web1"])[0].status.pid == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [b"\xff\xfe{", b"[1, 2]", b'{"release": ' + b"[" * 100 + b"]" * 100 + b"}", b"nope"])
def test_a_hosts_unreadable_status_is_that_hosts_problem_and_the_others_show(fresh_redis, value):
    store = new_store(fresh_redis.client(), "ff")
    change = store.activate("B")
    report(store, "web2", "B", change.revision, change.epoch)
    store.client.set(store.keys.host("web1"), value)
    views = {v.host: v for v in fleet_view(store, ["web1", "web2"])}
    assert views["web1"].problem.startswith("degraded: unreadable status in Redis: ")
    assert views["web2"].healthy
    laggards = wait_for_acks(store, ["web1", "web2"], change.epoch, change.revision, "B", timeout=0.2)
    assert list(laggards) == ["web1"] and "unreadable status" in laggards["web1"]
