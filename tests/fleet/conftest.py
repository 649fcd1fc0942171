"""Fixtures that own real systemd hosts (the fleet harness in `fleet/`): booted once, always torn down.

* `fleet` — the session's fleet: web1..web3 and redis1 on the provisioned base, 127.0.1.1-4
  (override the subnet with FRONTFLEET_TEST_SUBNET, e.g. while a `make demo` fleet holds 127.0.1.x).
* `bare_fleet` — web1 and redis1 on the bare base (nothing installed yet) on 127.0.2.x, for the
  test that proves the roles' install path.
* `boot_fleet` — a factory for any other fleet a test needs (own name, own subnet).

A missing tool is a failure that says which apt command fixes it, never a skip (CI=true or not).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleet import Fleet
from fleet.system import apt_command, missing_tools
from tests.fleet.deployment import Deployment
from tests.fleet.helpers import wait_healthy

#: The first fleet test may build the base images (debootstrap + apt: about a minute, once per cache).
FIRST_FLEET_TEST_TIMEOUT = 900

BootFleet = Callable[..., Fleet]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the first fleet test the time a first-ever base build needs; the others keep the default.

    Also when that test has a shorter timeout of its own (a file run alone, e.g. tests/fleet/test_upgrade.py):
    the marker goes first, as pytest-timeout reads the closest one.
    """
    for item in items:
        if item.get_closest_marker("fleet") is not None:
            own = item.get_closest_marker("timeout")
            seconds = (own.args[0] if own.args else own.kwargs.get("timeout", 0)) if own else 0
            if seconds < FIRST_FLEET_TEST_TIMEOUT:
                item.add_marker(pytest.mark.timeout(FIRST_FLEET_TEST_TIMEOUT), append=False)
            return


def fleet_name(prefix: str, subnet: str) -> str:
    """A fleet's name carries its subnet: two sessions on different subnets (two engineers, two CI jobs) must
    not share a state directory, or the second `up` would tear down the first one's hosts."""
    return f"{prefix}-{subnet.removeprefix('127.').replace('.', '-')}"


def require_fleet_tools() -> None:
    """Fail (never skip) when the harness cannot run here, with the command that fixes it."""
    if os.geteuid() != 0:
        pytest.fail("the fleet tests boot systemd-nspawn containers and need root")
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; install with: {apt_command(missing.values())}"
                    " (or run `make test`, which does)")


@pytest.fixture(scope="session")
def boot_fleet() -> Iterator[BootFleet]:
    """Boot an extra fleet: boot_fleet(name, subnet=..., web=1, redis=0, base="bare"). Every fleet
    booted through it is torn down at the end of the session, also after a failure."""
    booted: list[Fleet] = []

    def boot(name: str, *, subnet: str, web: int = 1, redis: int = 0, base: str = "bare") -> Fleet:
        require_fleet_tools()
        fleet = Fleet(name, subnet=subnet)
        booted.append(fleet)
        fleet.up(web=web, redis=redis, base=base)
        return fleet

    try:
        yield boot
    finally:
        for fleet in booted:
            fleet.down()


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """web1..web3 + redis1 on the provisioned base, booted once per session."""
    require_fleet_tools()
    subnet = os.environ.get("FRONTFLEET_TEST_SUBNET", "127.0.1")
    fleet = Fleet(fleet_name("test", subnet), subnet=subnet)
    try:
        fleet.up(web=3, redis=1, base="provisioned")
        yield fleet
    finally:
        fleet.down()


@pytest.fixture(scope="session")
def bare_fleet(boot_fleet: BootFleet) -> Fleet:
    """web1 + redis1 on the bare base (only debootstrap's packages) on 127.0.2.x."""
    subnet = os.environ.get("FRONTFLEET_TEST_BARE_SUBNET", "127.0.2")
    return boot_fleet(fleet_name("test-bare", subnet), subnet=subnet, web=1, redis=1, base="bare")


@pytest.fixture(scope="session")
def deployed(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The session's fleet after `ansible-playbook deploy.yml` (Redis, agents, nginx; no release yet).

    Tests that move the fleet's release leave it serving some release of theirs; a test that needs a
    known release rolls one out first. Tests that stop an agent or power off a host bring it back in a
    `finally`.
    """
    deployment = Deployment.create(fleet, tmp_path_factory.mktemp("inventory") / "fleettest")
    result = deployment.playbook()
    assert result.returncode == 0, "deploy.yml failed on the session's fleet; see the output above"
    return deployment


@pytest.fixture
def agent_control(deployed: Deployment) -> Iterator[Any]:
    """stop(host) stops a host's sync agent; every stopped agent is started again afterwards."""
    stopped: list[str] = []

    def stop(host: str) -> None:
        stopped.append(host)
        deployed.ssh(host, "systemctl stop sync-agent")

    try:
        yield stop
    finally:
        for host in stopped:
            deployed.ssh(host, "systemctl start sync-agent")
        if stopped:
            wait_healthy(deployed)
