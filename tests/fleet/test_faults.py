"""Faults on real hosts: a full filesystem under the release root, and a flood of malformed events.

A write that the filesystem refuses is never acknowledged: the host says `degraded` with the error, `fab
status` exits 5 naming it, and the change lands by itself once there is room. A rollout to a host whose
releases filesystem is full fails at staging, naming the host, before anything switches. A flood of
malformed events on the namespace's channel takes no agent down and costs at most one snapshot read per
batch. Each test puts the session's fleet back as it found it (mounts removed, agents running), also
after a failure.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis

from sync_agent.protocol import PUBLISHER_USER, Keys
from tests.fleet.deployment import Deployment, wait_until
from tests.fleet.fab_builds import Builds, assert_fleet_serves, fab_json, release_id, rollout
from tests.fleet.helpers import agent_pid, served_data, serves, wait_agent_ready, wait_fab_status
from tests.servers import new_store

pytestmark = pytest.mark.fleet

HOST = "web2"  # the host that gets the fault
ROOT = "/srv/fleettest"
NAMESPACE = "fleettest"
AGENT_USER = "sync-agent"  # roles/sync_agent: sync_agent_user, who owns shared/
SHARED_TMPFS = "2m"
FLOOD_SECONDS = 10.0
FLOOD_RATE = 1000  # malformed events per second
FLOOD_MAX = int(FLOOD_SECONDS * FLOOD_RATE)  # the loop is bounded in count as well as in time
VALID_EVERY = 0.5  # seconds between the valid changes published during the flood


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds.create(tmp_path_factory.mktemp("builds"), "faults", chunks=20, pages=4)


@pytest.fixture
def on_a(deployed: Deployment, builds: Builds) -> str:
    """The fleet serves build A, every agent ready; its release id."""
    rollout(deployed, builds.a)
    wait_fab_status(deployed, 0)
    return release_id(deployed, builds.a)


# --- what the operator sees ---------------------------------------------------------------------------


# --- a small filesystem on a host ---------------------------------------------------------------------


def free_kib(deployed: Deployment, path: str) -> int:
    return int(deployed.ssh(HOST, f"df --output=avail -k {path} | tail -1").strip())


def fill(deployed: Deployment, path: str) -> None:
    """Write a filler file until the filesystem refuses (dd ends with ENOSPC: expected)."""
    deployed.ssh(HOST, f"dd if=/dev/zero of={path}/.filler bs=64k 2>/dev/null; sync", check=False)
    assert free_kib(deployed, path) == 0, f"{path} on {HOST} is not full"


def unfill(deployed: Deployment, path: str) -> None:
    deployed.ssh(HOST, f"rm -f {path}/.filler")


@contextlib.contextmanager
def small_shared(deployed: Deployment) -> Iterator[str]:
    """A 2 MiB tmpfs over shared/ on HOST, owned like shared/ (the agent's user), seen by a freshly started agent
    (its unit's mount namespace is made at start). Afterwards: unmounted, the agent restarted, ready again."""
    shared = f"{ROOT}/shared"
    uid, gid = deployed.ssh(HOST, f"id -u {AGENT_USER}; id -g {AGENT_USER}").split()
    pid = deployed.status_of(HOST).get("pid", "")
    deployed.ssh(HOST, "systemctl stop sync-agent")
    try:
        deployed.ssh(HOST, f"mount -t tmpfs -o size={SHARED_TMPFS},mode=0755,uid={uid},gid={gid} "
                           f"frontfleet-test-shared {shared}")
        deployed.ssh(HOST, "systemctl start sync-agent")  # it rewrites data.json from the snapshot at start
        yield shared
    finally:
        deployed.ssh(HOST, "systemctl stop sync-agent", check=False)
        deployed.ssh(HOST, f"mountpoint -q {shared} && umount {shared} || true", check=False)
        deployed.ssh(HOST, "systemctl start sync-agent", check=False)
    assert deployed.ssh(HOST, f"mountpoint {shared}", check=False).strip().endswith("is not a mountpoint")
    wait_agent_ready(deployed, HOST, not_pid=pid)


@contextlib.contextmanager
def small_releases(deployed: Deployment) -> Iterator[str]:
    """A tmpfs over releases/ on HOST holding a copy of what releases/ holds (so `current` still resolves, nginx
    serves the same files), with little room to spare. Afterwards: unmounted, the original releases/ back."""
    releases = f"{ROOT}/releases"
    copy = "/var/tmp/frontfleet-test-releases"
    used_kib = int(deployed.ssh(HOST, f"du -sk {releases} | cut -f1").strip())
    deployed.ssh(HOST, f"rm -rf {copy} && cp -a {releases} {copy}")
    try:
        deployed.ssh(HOST, f"mount -t tmpfs -o size={used_kib * 2 + 1024}k,mode=0755 frontfleet-test-releases "
                           f"{releases} && cp -a {copy}/. {releases}/")
        yield releases
    finally:
        deployed.ssh(HOST, f"mountpoint -q {releases} && (umount {releases} || umount -l {releases}) || true",
                     check=False)
        deployed.ssh(HOST, f"rm -rf {copy}", check=False)
    assert deployed.ssh(HOST, f"mountpoint {releases}", check=False).strip().endswith("is not a mountpoint")


# --- (a) a full filesystem under the release root -----------------------------------------------------------


def test_a_full_shared_filesystem_is_degraded_never_acknowledged_and_the_change_lands_once_there_is_room(
        deployed: Deployment, on_a: str) -> None:
    key, value = "faults-full", {"token": uuid.uuid4().hex}
    try:
        with small_shared(deployed) as shared:
            wait_agent_ready(deployed, HOST)
            assert served_data(deployed, HOST) == served_data(deployed, "web1"), "the agent rewrote data.json at start"
            fill(deployed, shared)

            change = fab_json(deployed, "data-set", key, json.dumps(value))
            others = [h for h in deployed.web_hosts if h != HOST]
            for host in others:
                wait_until(partial(serves, deployed, host, key, value), timeout=10, what=f"{host} to serve the change")
            status = wait_until(lambda: (s := deployed.status_of(HOST))["state"] == "degraded" and s, timeout=10,
                                what=f"{HOST} to report degraded")
            assert "data.json" in status["error"] and "No space left on device" in status["error"], status["error"]
            time.sleep(2)  # retries run meanwhile; none may acknowledge
            status = deployed.status_of(HOST)
            assert status["state"] == "degraded"
            assert int(status["revision"]) < change["revision"], "a write that failed was acknowledged"
            assert key not in served_data(deployed, HOST)

            unhealthy = deployed.fab("status")
            assert unhealthy.returncode == 5
            assert f"1 host(s) unhealthy: {HOST} (degraded: " in unhealthy.stderr
            assert "No space left on device" in unhealthy.stderr
            line = next(line for line in unhealthy.stdout.splitlines() if line.startswith(HOST))
            assert "degraded" in line and "data.json" in line

            unfill(deployed, shared)
            freed = time.monotonic()
            wait_until(lambda: served_data(deployed, HOST).get(key) == value, timeout=15,
                       what=f"{HOST} to serve the change once there is room")
            landed = time.monotonic() - freed
            status = wait_agent_ready(deployed, HOST, timeout=10)
            assert int(status["revision"]) >= change["revision"] and status["error"] == ""
            wait_fab_status(deployed, 0, timeout=10)
            print(f"the change landed {landed:.1f}s after the filler was removed")
    finally:
        deployed.fab("data-del", key)


def test_a_rollout_to_a_host_whose_releases_filesystem_is_full_fails_at_staging_and_switches_nothing(
        deployed: Deployment, builds: Builds, on_a: str) -> None:
    before = {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts}
    with small_releases(deployed) as releases:
        assert_fleet_serves(deployed, builds.a)  # the copy serves what the original did
        fill(deployed, releases)
        result = deployed.fab("rollout", "--build", str(builds.b), "--timeout", "5")
        assert result.returncode == 1
        assert "staging failed, nothing was switched" in result.stderr
        assert f"{HOST}: sync-agent: not enough space in {releases}: needs " in result.stderr
        assert " MiB, 0.0 MiB free" in result.stderr
        assert all(f"{host}:" not in result.stderr for host in deployed.web_hosts if host != HOST)
        assert_fleet_serves(deployed, builds.a)
        assert {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts} == before
        assert not deployed.ssh(HOST, f"ls -d {releases}/*.partial 2>/dev/null", check=False).strip()
    assert_fleet_serves(deployed, builds.a)
    assert {row["release"] for row in fab_json(deployed, "status")["hosts"]} == {on_a}


# --- (b) a flood of malformed events ------------------------------------------------------------------------


def publisher(deployed: Deployment) -> redis.Redis:
    """A client to the fleet's Redis with the publisher's credentials, as `fab` has them."""
    redis_host = next(h for h in deployed.fleet.hosts.values() if h.role == "redis")
    password = (deployed.inventory / "credentials" / "redis-publisher").read_text().strip()
    return redis.Redis(host=redis_host.address, port=6379, username=PUBLISHER_USER, password=password,
                       decode_responses=True, socket_timeout=10)


def malformed_events(epoch: str, revision: int) -> list[str]:
    """One of each kind: not JSON, a value nested 990 deep, a foreign epoch, a future revision, NaN."""
    def data_event(value: str, event_epoch: str = epoch, rev: int = revision + 1_000_000) -> str:
        return (f'{{"v":1,"type":"data","epoch":{json.dumps(event_epoch)},"rev":{rev},"op":"set","key":"x",'
                f'"value":{value}}}')

    return [
        "{not json",
        data_event("[" * 990 + "]" * 990),
        data_event('"forged"', event_epoch="forged-epoch", rev=revision + 1),
        data_event('"from the future"'),
        data_event("NaN", rev=revision + 1),
    ]


def counters(deployed: Deployment) -> dict[str, dict[str, int]]:
    fields = ("pid", "batches", "resyncs", "skipped")
    statuses = {host: deployed.status_of(host) for host in deployed.web_hosts}
    missing = {host: [f for f in fields if f not in s] for host, s in statuses.items() if set(fields) - set(s)}
    assert not missing, f"the agents' status lacks counters: {missing}"
    return {host: {f: int(s[f]) for f in fields} for host, s in statuses.items()}


def test_a_flood_of_malformed_events_takes_no_agent_down_and_the_last_valid_change_lands(
        deployed: Deployment, on_a: str) -> None:
    client = publisher(deployed)
    store = new_store(client, NAMESPACE)
    keys = Keys(NAMESPACE)
    key = "faults-flood"
    before = counters(deployed)
    pids = {host: agent_pid(deployed, host) for host in deployed.web_hosts}
    assert pids == {host: c["pid"] for host, c in before.items()}
    sent = valid = 0
    last_value: Any = None
    started = time.monotonic()
    next_valid = started
    try:
        while sent < FLOOD_MAX and (now := time.monotonic()) - started < FLOOD_SECONDS:
            if now >= next_valid:
                valid += 1
                last_value = {"n": valid, "token": uuid.uuid4().hex[:8]}
                store.data_set(key, json.dumps(last_value))
                next_valid += VALID_EVERY
            events = malformed_events(str(client.get(keys.epoch)), int(str(client.get(keys.revision) or 0)))
            pipe = client.pipeline(transaction=False)
            for index in range(20):  # 20 events per 20 ms: FLOOD_RATE a second
                pipe.publish(keys.events, events[(sent + index) % len(events)])
            pipe.execute()
            sent += 20
            time.sleep(max(0.0, started + sent / FLOOD_RATE - time.monotonic()))
        flood_seconds = time.monotonic() - started
        print(f"published {sent} malformed events and {valid} valid changes in {flood_seconds:.1f}s")
        assert sent >= FLOOD_MAX * 0.8, f"only {sent} events in {flood_seconds:.1f}s: the flood was too slow"

        for host in deployed.web_hosts:
            wait_until(partial(serves, deployed, host, key, last_value), timeout=15,
                       what=f"{host} to serve the last valid change {last_value}")
        for host in deployed.web_hosts:
            wait_agent_ready(deployed, host, timeout=15)
        after = counters(deployed)
        assert {host: agent_pid(deployed, host) for host in deployed.web_hosts} == pids, "an agent restarted"
        for host in deployed.web_hosts:
            delta = {field: after[host][field] - before[host][field] for field in ("batches", "resyncs", "skipped")}
            print(f"{host}: {delta}")
            assert after[host]["pid"] == before[host]["pid"], f"{host}'s agent is another process"
            assert delta["skipped"] > 0, f"{host} skipped no bad input: {delta}"
            assert delta["resyncs"] <= delta["batches"], f"{host} read the snapshot more than once a batch: {delta}"
        wait_fab_status(deployed, 0, timeout=10)
    finally:
        store.data_del(key)
        client.close()
