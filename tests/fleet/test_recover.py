"""A store that goes back in time, and one that is wiped, on the session's fleet (issue 14): real Redis (AOF + RDB,
restarted by systemd), real agents, `fab` as an operator runs it. Each test leaves the fleet recovered and ready."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fleet.deployment import Deployment, wait_until
from tests.fleet.fab_builds import Builds, assert_fleet_serves, fab_json, release_id, rollout
from tests.fleet.helpers import served_data, wait_agent_ready, wait_fab_status

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

REDIS_DIR = "/var/lib/redis"
SAVED = "/root/redis-saved"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds.create(tmp_path_factory.mktemp("builds"), "recover")


def redis_host(deployed: Deployment) -> str:
    return next(h.name for h in deployed.fleet.hosts.values() if h.role == "redis")


def redis_do(deployed: Deployment, shell: str) -> None:
    """Stop Redis (it writes its files on the way down), run shell on its host, start it again."""
    deployed.ssh(redis_host(deployed), f"systemctl stop redis-server && {shell} && systemctl start redis-server")


@pytest.fixture
def leave_recovered(deployed: Deployment) -> Iterator[None]:
    """Whatever the test did to the store, the fleet leaves it recovered and every agent ready."""
    try:
        yield
    finally:
        deployed.ssh(redis_host(deployed), f"rm -rf {SAVED}", check=False)
        if deployed.fab("status").returncode != 0:
            deployed.fab("recover", "--yes")
        wait_fab_status(deployed, 0)


def wait_status_says(deployed: Deployment, text: str) -> None:
    """Until `fab status` exits 5 and names text (the agents rewrite their status hashes as they notice)."""
    wait_until(lambda: (r := deployed.fab("status")).returncode == 5 and text in r.stdout + r.stderr, timeout=60,
               interval=0.5, what=f"`fab status` to exit 5 saying {text!r}")


def switched_at(deployed: Deployment) -> dict[str, str]:
    return {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts}


def data_json(deployed: Deployment) -> dict[str, bytes]:
    return {host: deployed.ssh(host, "cat /srv/fleettest/shared/data.json").encode() for host in deployed.web_hosts}


def test_a_store_restarted_from_a_save_before_the_last_rollout_is_refused_until_recovered(
        deployed: Deployment, builds: Builds, leave_recovered: None) -> None:
    rollout(deployed, builds.a)
    fab_json(deployed, "data-set", "recover-note", '"before the save"')
    redis_do(deployed, f"rm -rf {SAVED} && cp -a {REDIS_DIR} {SAVED}")  # a save from before the rollout
    wait_fab_status(deployed, 0)
    rollout(deployed, builds.b)
    fab_json(deployed, "data-set", "recover-note", '"after the rollout"')
    wait_fab_status(deployed, 0)
    stamps = switched_at(deployed)

    redis_do(deployed, f"rm -rf {REDIS_DIR}/* && cp -a {SAVED}/. {REDIS_DIR}/")  # back in time
    wait_status_says(deployed, "went back in time")
    assert_fleet_serves(deployed, builds.b)  # every host stays on the newer release, with the newer data
    for host in deployed.web_hosts:
        assert served_data(deployed, host)["recover-note"] == "after the rollout"
        assert deployed.status_of(host)["state"] == "degraded"

    deployed.ssh("web1", "systemctl restart sync-agent")  # an agent restarted meanwhile does not take it either
    wait_until(lambda: "went back in time" in deployed.status_of("web1").get("error", ""), timeout=30,
               what="web1, restarted, refusing the older store")
    assert_fleet_serves(deployed, builds.b, ["web1"])

    for n in range(4):  # the restored store takes more changes than the agents had seen: another branch
        fab_json(deployed, "data-set", "recover-branch", str(n))
    wait_status_says(deployed, "went another way")
    for host in deployed.web_hosts:
        assert "recover-branch" not in served_data(deployed, host)

    recovered = fab_json(deployed, "recover", "--yes", timeout=120)
    assert recovered["release"] == release_id(deployed, builds.b)
    assert recovered["history"] == [release_id(deployed, builds.a), release_id(deployed, builds.b)]
    wait_fab_status(deployed, 0)
    assert switched_at(deployed) == stamps, "a recovery switches nothing"
    for host in deployed.web_hosts:
        data = served_data(deployed, host)
        assert data["recover-note"] == "after the rollout" and "recover-branch" not in data


def test_a_wiped_store_refuses_changes_and_recover_rebuilds_it_from_the_hosts(
        deployed: Deployment, builds: Builds, leave_recovered: None) -> None:
    rollout(deployed, builds.a)
    fab_json(deployed, "data-set", "recover-wiped", '{"kept": true}')
    wait_fab_status(deployed, 0)
    before, stamps = data_json(deployed), switched_at(deployed)

    redis_do(deployed, f"rm -rf {REDIS_DIR}/*")  # Redis lost everything
    refused = deployed.fab("data-set", "recover-wiped", '{"kept": false}')
    assert refused.returncode == 1 and "fab recover" in refused.stderr, refused.stderr
    wait_status_says(deployed, "store is empty")
    assert data_json(deployed) == before  # every host keeps its data

    asked = deployed.fab("recover")  # standard input is no terminal: it shows the plan and asks for --yes
    assert asked.returncode == 2 and "--yes" in asked.stderr and "from" in asked.stdout, asked.stderr
    recovered = fab_json(deployed, "recover", "--yes", timeout=120)
    assert recovered["release"] == release_id(deployed, builds.a) and recovered["store_before"] is None
    for host in deployed.web_hosts:
        wait_agent_ready(deployed, host)
    assert data_json(deployed) == before, "the same data.json, byte for byte"
    assert switched_at(deployed) == stamps, "nothing switched"
    assert_fleet_serves(deployed, builds.a)
    assert json.loads(deployed.fab("data-get", "recover-wiped", "--json").stdout) == {"kept": True}
