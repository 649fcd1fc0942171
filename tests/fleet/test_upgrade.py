"""Upgrading a deployed fleet in place (docs/upgrading.md): controllers first, then the deploy playbook.

A fleet of its own is deployed from an earlier commit (a `git worktree` of UPGRADE_FROM: its deploy.yml,
roles, fabfile and sync_agent), then driven by this tree: first this checkout's control plane alone against
the old agents; then, as a team would use frontfleet from its own repository (docs/ci.md), the `frontfleet`
distribution built from this tree and installed from its wheel into a fresh virtualenv, in a folder outside
the checkout: `frontfleet init`, the inventory edited to this fleet, `ansible-playbook frontfleet.fleet.deploy`
under HTTP load, then a data change, `fab rollout` and `fab status`. What a user would see is checked at each
step: every request answered 200, every host serving and syncing, each host's agent the `frontfleet`
distribution with nothing left of `frontfleet-sync-agent`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import sync_agent
from sync_agent.control.agentwheel import build_agent_wheel
from tests.fleet.conftest import BootFleet, fleet_name
from tests.fleet.deployment import REPO, Deployment, wait_until
from tests.fleet.fab_builds import Builds, assert_fleet_serves, fab_json, redis_cli, release_id, rollout, status_json
from tests.fleet.helpers import agent_pid
from tests.fleet.http_load import HttpLoad

pytestmark = pytest.mark.fleet

#: The fleet is deployed from this commit, then upgraded to the working tree. It is the last commit before
#: issue 13's first change (the package move), so the test proves that a fleet deployed before that round
#: upgrades in place. Move it forward (full hash, `git rev-parse`) only when a change is meant to break
#: compatibility with it, to the last commit before that change, and say so in the commit and in
#: docs/upgrading.md; never to make a failing upgrade pass.
UPGRADE_FROM = "ac5aed8269a4615bb3e12c6ee5c6d1bd79ef92a5"

SUBNET = os.environ.get("FRONTFLEET_TEST_UPGRADE_SUBNET", "127.0.31")
AGENT_VENV = "/opt/sync-agent"
AGENT_WHEELS = "/opt/sync-agent-wheels"
ROOT = "/srv/fleettest"  # the release root of frontfleet_app fleettest (tests/fleet/deployment.py)
#: Bounds of the background load: longer than the steps it covers take (about a minute), far below the timeouts.
LOAD_SECONDS = 300
LOAD_REQUESTS = 60_000


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def old_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A detached worktree of UPGRADE_FROM, removed again afterwards (also after a failure)."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{UPGRADE_FROM}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {UPGRADE_FROM} is not in this clone; the upgrade test needs the history "
                    "(git fetch --unshallow)")
    path = tmp_path_factory.mktemp("upgrade") / "frontfleet-old"
    git("worktree", "prune")  # what a killed run left registered: its temp folder is gone
    git("worktree", "add", "--detach", str(path), UPGRADE_FROM)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", str(path))


@pytest.fixture(scope="module")
def installed_bin(distribution_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtualenv holding only `pip install 'frontfleet[controller]'` from the built wheel."""
    venv = tmp_path_factory.mktemp("controller") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                                f"{distribution_wheel}[controller]"], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, f"pip install of {distribution_wheel.name} failed: {installed.stderr[-3000:]}"
    return venv / "bin"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds.create(tmp_path_factory.mktemp("builds"), "upgrade", chunks=20, pages=4)


@pytest.fixture(scope="module")
def old_fleet(boot_fleet: BootFleet, old_checkout: Path, builds: Builds,
              tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """web1, web2 and redis1 deployed by the old commit's deploy.yml with build A, and a data key set with the
    old commit's `fab data-set`."""
    fleet = boot_fleet(fleet_name("test-upgrade", SUBNET), subnet=SUBNET, web=2, redis=1, base="provisioned")
    old = Deployment.create(fleet, tmp_path_factory.mktemp("inventory") / "fleettest", checkout=old_checkout)
    result = old.playbook("-e", f"release_build={builds.a}")
    assert result.returncode == 0, f"the old commit's deploy.yml failed: {result.stdout[-3000:]}{result.stderr}"
    assert old.fab("data-set", "banner", json.dumps({"text": "set by the old controller"})).returncode == 0
    for host in old.web_hosts:
        wait_until(partial(data_on, old, host, "banner", {"text": "set by the old controller"}), timeout=10,
                   what=f"{host}'s /_sync/data.json with the old controller's banner")
    return old


# --- what the test looks at ---------------------------------------------------------------------------------


def data_on(deployment: Deployment, host: str, key: str, value: Any) -> bool:
    """Whether host serves value under key in /_sync/data.json."""
    status, body, _ = deployment.get(host, "/_sync/data.json")
    return status == 200 and json.loads(body).get(key) == value


def wheel_files(wheel: Path) -> dict[str, str]:
    """sync_agent's files in a wheel: path → sha256."""
    with zipfile.ZipFile(wheel) as archive:
        return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()
                if name.startswith("sync_agent/")}


def old_wheel(checkout: Path) -> Path:
    """The agent wheel that the old commit's deploy.yml built for the hosts (one platform: the fleet's)."""
    wheels = sorted((checkout / ".build" / "wheels").glob("*/frontfleet_sync_agent-*.whl"))
    assert len(wheels) == 1, f"expected one agent wheel under {checkout}/.build/wheels, found {wheels}"
    return wheels[0]


def installed_files(deployment: Deployment, host: str) -> dict[str, str]:
    """sync_agent's files in the agent's virtualenv on host (what the running agent imports): path → sha256."""
    out = deployment.ssh(host, f"cd {AGENT_VENV}/lib/python3*/site-packages && "
                               "find sync_agent -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum")
    return {path: digest for digest, path in (line.split(maxsplit=1) for line in out.splitlines())}


def distributions(deployment: Deployment, host: str) -> dict[str, str]:
    """name → version of what the agent's virtualenv holds, as pip lists it on host."""
    out = deployment.ssh(host, f"{AGENT_VENV}/bin/pip list --format json --disable-pip-version-check")
    return {row["name"].lower(): row["version"] for row in json.loads(out)}


# --- the upgrade --------------------------------------------------------------------------------------------


@pytest.mark.timeout(480)
def test_old_agents_keep_syncing_against_the_new_control_plane(old_fleet: Deployment, old_checkout: Path) -> None:
    """Controllers first: with only the controller upgraded, `fab data-set` and `fab status` of this checkout
    work against the old agents, which apply the change and serve it."""
    new = replace(old_fleet, checkout=REPO)
    old_agent = wheel_files(old_wheel(old_checkout))
    for host in new.web_hosts:
        assert installed_files(new, host) == old_agent, f"{host} does not run the old commit's agent"
    value = {"text": "set by the new controller", "at": time.time()}
    fab_json(new, "data-set", "middle", json.dumps(value))
    for host in new.web_hosts:
        wait_until(partial(data_on, new, host, "middle", value), timeout=10,
                   what=f"{host}'s old agent serving the new controller's data change")
        assert data_on(new, host, "banner", {"text": "set by the old controller"})
    code, rows = status_json(new)
    assert code == 0, f"fab status of the new controller against the old agents: {rows}"


def init_project(installed_bin: Path, folder: Path) -> str:
    """`frontfleet init` in a new folder outside the checkout, as a team runs it in its repository; its output."""
    folder.mkdir(parents=True)
    result = subprocess.run([str(installed_bin / "frontfleet"), "init"], cwd=folder, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PATH": f"{installed_bin}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(720)
def test_the_installed_package_upgrades_old_agents_in_place_without_a_failed_request(
        old_fleet: Deployment, old_checkout: Path, builds: Builds, installed_bin: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """From a team's folder (`frontfleet init`, the inventory edited to this fleet) with the frontfleet installed
    from its wheel: `ansible-playbook frontfleet.fleet.deploy` under HTTP load, no request fails, the release
    stays, the agents run the new code as the `frontfleet` distribution, the old one gone; then a data change, a
    rollout and `fab status` of that folder reach every host."""
    project = tmp_path_factory.mktemp("team") / "shop"
    shown = init_project(installed_bin, project)
    assert "inventory/production/hosts.yml" in shown and "fabfile.py" in shown and "ansible.cfg" in shown
    new = replace(old_fleet.like(project / "inventory" / "production"), checkout=project, bin=installed_bin)
    hosts = new.web_hosts
    release = release_id(new, builds.a)
    pids = {host: agent_pid(new, host) for host in hosts}
    old_statuses = [f"fleettest:status:{host}" for host in hosts]  # the hashes the old agents write
    assert redis_cli(old_fleet, "EXISTS", *old_statuses).strip() == str(len(hosts))
    old_agent = wheel_files(old_wheel(old_checkout))
    checkout_wheel = build_agent_wheel(tmp_path_factory.mktemp("agent-wheel"))  # what this checkout writes
    urls = [f"http://{new.address(host)}{path}" for host in hosts for path in ("/", "/_sync/data.json")]
    value = {"text": "after the upgrade", "at": time.time()}
    with HttpLoad(urls, max_seconds=LOAD_SECONDS, max_requests=LOAD_REQUESTS) as load:
        load.phase = "old agents"
        time.sleep(1)
        load.phase = "deploy.yml"
        result = new.playbook(playbook="frontfleet.fleet.deploy")
        assert result.returncode == 0, f"the installed frontfleet.fleet.deploy failed on the old fleet: " \
                                       f"{result.stdout[-3000:]}"
        load.phase = "after deploy.yml"
        served = {host: new.serves_build(host, builds.a) for host in hosts}
        installed = {host: installed_files(new, host) for host in hosts}
        shipped = {host: new.ssh(host, f"sha256sum {AGENT_WHEELS}/frontfleet*.whl") for host in hosts}
        dists = {host: distributions(new, host) for host in hosts}
        upgraded_pids = {host: agent_pid(new, host) for host in hosts}
        statuses = {host: new.status_of(host) for host in hosts}
        layouts = {host: new.ssh(host, f"cd {ROOT} && stat -c '%n %U' . releases pool live shared && "
                                       "readlink live/current current") for host in hosts}
        load.phase = "fab data-set"
        fab_json(new, "data-set", "after", json.dumps(value))
        for host in hosts:
            wait_until(partial(data_on, new, host, "after", value), timeout=10,
                       what=f"{host}'s upgraded agent serving the data change")
        load.phase = "fab rollout"
        rolled = rollout(new, builds.b)
        load.phase = "after fab rollout"
        time.sleep(1)
    print(f"load: {sum(load.requests.values())} requests, stopped by {load.stopped_by}; "
          f"during deploy.yml: {dict(load.count('deploy.yml'))}")
    assert not load.failures, f"{len(load.failures)} failed requests:\n" + "\n".join(map(str, load.failures[:20]))
    assert load.stopped_by == "stop()", f"the load ended before the test did ({load.stopped_by})"
    assert set(load.count("deploy.yml")) == set(urls) and min(load.count("deploy.yml").values()) >= 20, \
        f"too little load during deploy.yml: {load.count('deploy.yml')}"

    new_agent = wheel_files(checkout_wheel)
    checkout_sha = hashlib.sha256(checkout_wheel.read_bytes()).hexdigest()
    for host in hosts:
        assert served[host] == [], f"{host} no longer serves the release it had: {served[host][:5]}"
        assert statuses[host]["release"] == release, f"{host} reports {statuses[host]['release']}, not {release}"
        # the earlier layout (the agent owned the root, current sat in it) moved in place: root's tree, agent's links
        assert layouts[host].strip().split("\n") == [
            ". root", "releases root", "pool root", "live sync-agent", "shared sync-agent",
            f"../releases/{release}", "live/current"], f"{host}'s release root after the upgrade: {layouts[host]}"
        # one agent wheel on the host, byte-identical to the one this checkout writes (two controllers, one file)
        assert shipped[host].split() == [checkout_sha, f"{AGENT_WHEELS}/{checkout_wheel.name}"], shipped[host]
        assert installed[host] == new_agent, f"{host}'s agent virtualenv does not hold the installed agent"
        assert dists[host].get("frontfleet") == sync_agent.__version__ and "frontfleet-sync-agent" not in dists[host], \
            f"{host}'s agent virtualenv holds {dists[host]}"
        assert statuses[host]["agent_version"] == sync_agent.__version__
        assert statuses[host]["pid"] == str(upgraded_pids[host])
        if new_agent != old_agent:
            assert upgraded_pids[host] not in (0, pids[host]), f"{host}'s agent was not restarted on the new code"
        else:  # the pinned commit has this checkout's agent: nothing to upgrade, nothing to restart
            assert upgraded_pids[host] == pids[host]
    assert rolled["release"] == release_id(new, builds.b) and rolled["previous"] == release
    # each agent reports on NS:host:<host> now; its old hash went (the release play, a rollout's prune)
    assert redis_cli(old_fleet, "EXISTS", *old_statuses).strip() == "0"
    assert_fleet_serves(new, builds.b)
    # `fab status` as the team runs it in its folder: the inventory from the ansible.cfg that init wrote
    env = {key: value for key, value in new.env().items() if key != "ANSIBLE_INVENTORY"}
    shown_status = subprocess.run([str(installed_bin / "fab"), "status", "--json"], cwd=project, env=env,
                                  capture_output=True, text=True, timeout=120)
    assert shown_status.returncode == 0, f"fab status in the team's folder: {shown_status.stdout}{shown_status.stderr}"
    assert {row["host"]: row["release"] for row in json.loads(shown_status.stdout)["hosts"]} == \
        {host: rolled["release"] for host in hosts}
