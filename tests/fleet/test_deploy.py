"""`ansible-playbook deploy.yml` provisions a real local fleet: Redis with ACL users, hardened agents, nginx.

The bare-host tests boot their own web1 + redis1 from debootstrap's packages only (the roles install the rest from
Debian's mirror). The other tests share the session's `deployed` fleet: each one that changes a setting or the
fleet's shape puts it back in a `finally`, so a later run on that fleet starts converged.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from functools import partial

import pytest

from fleet import Fleet
from tests.fleet.deployment import Deployment, recap, wait_until
from tests.fleet.helpers import EXAMPLE_BUILD, agent_pid, control, handler_hosts, release_report, rollout

pytestmark = pytest.mark.fleet

AGENT_RESTART_HANDLER = "frontfleet.fleet.sync_agent : Restart the agent with its new code or config"
NGINX_RELOAD_HANDLER = "frontfleet.fleet.web : Reload nginx with the checked configuration"
MAX_EXPOSURE = 0.9


@pytest.fixture(scope="module")
def bare_run(bare_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[Deployment, subprocess.CompletedProcess[str]]:
    """The bare fleet after one `ansible-playbook deploy.yml -e release_build=examples/frontend`."""
    deployment = Deployment.create(bare_fleet, tmp_path_factory.mktemp("bare-inventory") / "fleettest")
    return deployment, deployment.playbook("-e", "release_build=examples/frontend")


def redis_cli(address: str, *args: str, user: str | None = None, password: str | None = None) -> str:
    """`redis-cli -h ADDRESS ARGS` from the controller, as an operator would type it; its output (errors included)."""
    command = ["redis-cli", "--no-auth-warning", "-h", address]
    if user is not None:
        command += ["--user", user, "--pass", password or ""]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip()


def reported_release(deployment: Deployment, host: str) -> str | None:
    return deployment.status_of(host).get("release")


# --- bare Debian hosts --------------------------------------------------------------------------------


@pytest.mark.timeout(1200)
def test_deploy_provisions_bare_debian_hosts(bare_run: tuple[Deployment, subprocess.CompletedProcess[str]]) -> None:
    """Hosts with only debootstrap's packages get python3-venv, nginx and redis-server and a clean run."""
    deployment, result = bare_run
    assert result.returncode == 0, "deploy.yml failed on bare hosts; see the output above"
    counts = recap(result.stdout)
    assert sorted(counts) == ["redis1", "web1"]
    assert all(row["failed"] == 0 and row["unreachable"] == 0 for row in counts.values()), counts
    for host, packages in {"web1": "python3-venv nginx", "redis1": "redis-server"}.items():
        states = deployment.ssh(host, f"dpkg-query -W -f='${{db:Status-Status}}\\n' {packages}").split()
        assert states == ["installed"] * len(packages.split()), (host, states)


def test_redis_answers_only_its_acl_users(bare_run: tuple[Deployment, subprocess.CompletedProcess[str]]) -> None:
    """Without credentials Redis refuses (NOAUTH); the default user is off; the publisher's password works."""
    deployment, _ = bare_run
    address = deployment.address("redis1")
    password = (deployment.inventory / "credentials" / "redis-publisher").read_text().strip()
    assert redis_cli(address, "PING").startswith("NOAUTH"), "Redis answered PING without authentication"
    for user, wrong in (("default", ""), ("default", password), ("publisher", "not-" + password)):
        refused = redis_cli(address, "PING", user=user, password=wrong)
        assert "WRONGPASS" in refused and "PONG" not in refused, (user, refused)
    assert redis_cli(address, "PING", user="publisher", password=password) == "PONG"


def test_agent_is_active_and_reports_its_status_in_redis(
        bare_run: tuple[Deployment, subprocess.CompletedProcess[str]]) -> None:
    """systemd runs the agent, and the agent's status hash in Redis names the release it serves."""
    deployment, _ = bare_run
    for host in deployment.web_hosts:
        assert deployment.ssh(host, "systemctl is-active sync-agent", check=False).strip() == "active"
        status = wait_until(partial(reported_release, deployment, host), timeout=15,
                            what=f"{host}'s status hash in Redis")
        assert status == deployment.env_js(host)["release"], deployment.status_of(host)


def test_nginx_serves_the_build_with_its_cache_headers(
        bare_run: tuple[Deployment, subprocess.CompletedProcess[str]]) -> None:
    """index.html must revalidate, /_sync/ is never stored, hashed assets are cached for a year."""
    deployment, _ = bare_run
    asset = next(p.relative_to(EXAMPLE_BUILD).as_posix() for p in sorted((EXAMPLE_BUILD / "assets").iterdir()))
    for host in deployment.web_hosts:
        assert deployment.serves_build(host, EXAMPLE_BUILD) == []
        expected = {"/": "no-cache", "/index.html": "no-cache", "/_sync/env.js": "no-store",
                    "/_sync/data.json": "no-store", f"/{asset}": "public, max-age=31536000, immutable"}
        for path, cache_control in expected.items():
            status, _, headers = deployment.get(host, path)
            assert (status, headers.get("Cache-Control")) == (200, cache_control), (host, path)


def test_agent_unit_is_hardened_to_an_exposure_of_at_most_0_9(
        bare_run: tuple[Deployment, subprocess.CompletedProcess[str]]) -> None:
    """`systemd-analyze security sync-agent.service` rates the unit at most 0.9 ("SAFE" or better)."""
    deployment, _ = bare_run
    for host in deployment.web_hosts:
        out = deployment.ssh(host, "systemd-analyze security --no-pager sync-agent.service", check=False)
        match = re.search(r"Overall exposure level for sync-agent\.service: ([0-9.]+) (\S+)", out)
        assert match is not None, out
        print(f"{host}: {match.group(0)}")
        assert float(match.group(1)) <= MAX_EXPOSURE, out


# --- the session's deployed fleet -----------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_second_run_changes_nothing(deployed: Deployment) -> None:
    """On a converged fleet (the `deployed` fixture ran deploy.yml once) a run reports changed=0 on every host."""
    result = deployed.playbook()
    assert result.returncode == 0
    counts = recap(result.stdout)
    assert sorted(counts) == sorted(deployed.fleet.hosts)
    assert {host: row["changed"] for host, row in counts.items()} == dict.fromkeys(counts, 0)


@pytest.mark.timeout(900)
def test_config_change_restarts_each_agent_once_as_check_mode_predicts(deployed: Deployment) -> None:
    """-e sync_agent_log_level=debug changes each agent's config: one restart per web host, Redis and nginx
    untouched; `--check --diff` run first predicts the same changed counts and changes nothing."""
    change = ("-e", "sync_agent_log_level=debug")
    pids = {host: agent_pid(deployed, host) for host in deployed.web_hosts}
    nginx = {host: deployed.ssh(host, "systemctl show --property=MainPID --value nginx") for host in deployed.web_hosts}
    try:
        check = deployed.playbook("--check", "--diff", *change)
        assert check.returncode == 0
        assert 'log_level = "debug"' in check.stdout, "--diff does not show the config change"
        assert {host: agent_pid(deployed, host) for host in deployed.web_hosts} == pids, "--check restarted an agent"

        real = deployed.playbook(*change)
        assert real.returncode == 0
        predicted = {host: row["changed"] for host, row in recap(check.stdout).items()}
        changed = {host: row["changed"] for host, row in recap(real.stdout).items()}
        print(f"changed per host: --check {predicted}, real {changed}")
        assert changed == predicted
        assert changed["redis1"] == 0
        assert all(changed[host] > 0 for host in deployed.web_hosts), changed
        assert handler_hosts(real.stdout, AGENT_RESTART_HANDLER) == deployed.web_hosts  # once per web host
        assert handler_hosts(real.stdout, NGINX_RELOAD_HANDLER) == []
        for host in deployed.web_hosts:
            assert agent_pid(deployed, host) not in (0, pids[host]), f"{host}'s agent was not restarted"
            assert deployed.ssh(host, "systemctl show --property=MainPID --value nginx") == nginx[host]
            assert 'log_level = "debug"' in deployed.ssh(host, "cat /etc/sync-agent/config.toml")
    finally:
        restore = deployed.playbook(playbook="frontfleet.fleet.agents")
        assert restore.returncode == 0, "could not put sync_agent_log_level back"


def test_data_change_reaches_every_host(deployed: Deployment) -> None:
    """`sync-agent data set` with the publisher's credentials shows in /_sync/data.json and env.js everywhere."""
    value = {"text": f"hello {uuid.uuid4().hex[:8]}", "enabled": True}
    result = control(deployed, "data", "set", "banner", json.dumps(value), "--json")
    assert result.returncode == 0, result.stderr

    def serves_value(host: str) -> bool:
        status, body, _ = deployed.get(host, "/_sync/data.json")
        return status == 200 and json.loads(body).get("banner") == value

    for host in deployed.web_hosts:
        wait_until(partial(serves_value, host), timeout=10, what=f"{host}'s /_sync/data.json")
        assert deployed.env_js(host)["data"]["banner"] == value


@pytest.mark.timeout(900)
def test_web_host_added_to_inventory_gets_agent_nginx_and_current_release(deployed: Deployment) -> None:
    """web4, added to the inventory, is provisioned and serves the current release on the next plain run; the
    other web hosts are untouched.

    web4 is removed again at the end (harness, inventory, its Redis user): the session's fleet is shared with tests that
    count on web1-3 + redis1 (fab status tables, rollout reports), and a host that exists for one test only
    would make their outcomes depend on test order.
    """
    rollout(deployed, EXAMPLE_BUILD)  # a known current release
    release = deployed.env_js("web1")["release"]
    fleet, hosts_file = deployed.fleet, deployed.inventory / "hosts.yml"
    fleet.add_host("web4")
    try:
        fleet.write_inventory(hosts_file)
        result = deployed.playbook()
        assert result.returncode == 0
        changed = {host: row["changed"] for host, row in recap(result.stdout).items()}
        print(f"changed per host: {changed}")
        assert changed["web4"] > 0
        assert changed["redis1"] > 0  # web4's agent gets its own ACL user
        # web1 carries the release task's one change (it runs once, for the group): it brought web4 up to date.
        assert (changed["web1"], changed["web2"], changed["web3"]) == (1, 0, 0), changed
        assert release_report(result.stdout)["hosts"] == ["web4"]
        assert deployed.ssh("web4", "systemctl is-active sync-agent nginx").split() == ["active", "active"]
        assert deployed.serves_build("web4", EXAMPLE_BUILD) == []
        assert deployed.env_js("web4")["release"] == release
        status, _, headers = deployed.get("web4", "/")
        assert (status, headers.get("Cache-Control")) == (200, "no-cache")
    finally:
        if "web4" in fleet.hosts:
            fleet.remove_host("web4")
        fleet.write_inventory(hosts_file)
        restore = deployed.playbook(playbook="frontfleet.fleet.redis")  # drop web4's ACL user: converged again
        assert restore.returncode == 0, "could not remove web4's Redis user"
