"""Least privilege, tried as an attacker would on the session's deployed fleet: what each credential cannot do,
and what no secret may show up in (docs/reliability.md, "Security: what each credential was refused")."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.fleet.deployment import Deployment
from tests.fleet.fab_builds import fab_json, rollout, salted_build
from tests.fleet.helpers import staged_releases, wait_agent_ready

pytestmark = pytest.mark.fleet

# Where a host keeps what sudo and the services logged: the journal (sudo logs through syslog into it) and the
# log files a host with rsyslog would have.
HOST_LOGS = "journalctl --no-pager -o cat; cat /var/log/auth.log /var/log/sudo.log /var/log/syslog 2>/dev/null"
# The summary line of `systemd-analyze security UNIT`: "→ Overall exposure level for sync-agent.service: 0.9 SAFE 😀"
OVERALL_EXPOSURE = re.compile(r"Overall exposure level for sync-agent\.service: (\d+\.\d) ([A-Z]+)")


@pytest.mark.timeout(900)
def test_no_generated_secret_in_ansible_output_sudo_logs_or_journals(deployed: Deployment, tmp_path: Path) -> None:
    """`ansible-playbook deploy.yml -vvv` as a sudo user (every remote command through sudo, and logged by it):
    no password of the credentials folder in its output, nor in any host's journal or log files afterwards."""
    as_deploy = deployed.like(tmp_path / "as-deploy", user="deploy")
    result = as_deploy.playbook("-vvv")
    assert result.returncode == 0, "deploy.yml -vvv as the deploy user failed; see the output above"
    output = result.stdout + result.stderr
    assert "EXEC" in output and "sudo" in output, "-vvv shows every remote command: this run shows none"
    secrets = {path.name: path.read_text().strip() for path in sorted((deployed.inventory / "credentials").iterdir())}
    # every password this fleet uses is searched for (an earlier test may have added a host: its password too)
    assert {"redis-publisher", *(f"redis-agent-{h}" for h in deployed.web_hosts)} <= set(secrets), sorted(secrets)
    leaks = [f"{name} in ansible-playbook -vvv's output" for name, secret in secrets.items() if secret in output]
    for host in sorted(deployed.fleet.hosts):
        logs = deployed.ssh(host, HOST_LOGS, check=False)
        assert "COMMAND=" in logs, f"{host}: no sudo command in its logs, so the search proves nothing"
        leaks += [f"{name} in {host}'s logs" for name, secret in secrets.items() if secret in logs]
    assert leaks == []


# --- root never follows a path the agent's user can change (docs/releases.md, "Who owns what") ------------------

ROOT = "/srv/fleettest"
CANARY = "/root/canary"
AS_AGENT = "setpriv --reuid=sync-agent --regid=sync-agent --clear-groups"


def as_agent(deployed: Deployment, host: str, command: str) -> subprocess.CompletedProcess[str]:
    """command in a shell run as the agent's user on host: what a compromised agent could do."""
    return deployed.fleet.ssh(host, f"{AS_AGENT} sh -c {shlex.quote(command)}")


def plant_canary(deployed: Deployment, host: str) -> None:
    deployed.ssh(host, f"rm -rf {CANARY} && mkdir -p {CANARY}/assets && echo root-only > {CANARY}/secret && "
                       f"cp {CANARY}/secret {CANARY}/assets/app.js && chmod -R go-rwx {CANARY}")


def canary_intact(deployed: Deployment, host: str) -> bool:
    return deployed.ssh(host, f"cat {CANARY}/secret {CANARY}/assets/app.js", check=False) == "root-only\nroot-only\n"


@pytest.mark.timeout(600)
def test_the_agents_user_cannot_swap_a_folder_that_staging_or_prune_works_in(deployed: Deployment,
                                                                               tmp_path: Path) -> None:
    """The attack of issue 16 (rename pool/ or releases/ away, plant a symlink to /root/canary, let the next
    rollout's root-run prune empty it) fails at its first step; the next rollout and its prune go through, the
    canary survives, every host serves the new build."""
    host = "web1"
    plant_canary(deployed, host)
    for name in ("pool", "releases"):
        moved = as_agent(deployed, host, f"mv {ROOT}/{name} {ROOT}/{name}.away")
        assert moved.returncode != 0 and "Permission denied" in moved.stderr, (name, moved.stdout, moved.stderr)
        planted = as_agent(deployed, host, f"ln -s {CANARY} {ROOT}/{name}.evil && ln -sfn {CANARY} {ROOT}/{name}")
        assert planted.returncode != 0 and "Permission denied" in planted.stderr, (name, planted.stderr)
        assert deployed.ssh(host, f"stat -c %U:%F {ROOT}/{name}").strip() == "root:directory"
    build = salted_build(tmp_path / "after-attack", "security-attack")
    rollout(deployed, build)
    pruned = fab_json(deployed, "prune", "--keep", "1")
    assert set(pruned) == set(deployed.web_hosts), f"fab prune --json: {pruned}"  # host → the releases it removed
    assert canary_intact(deployed, host), f"{CANARY} on {host} lost its files"
    for web in deployed.web_hosts:
        assert deployed.serves_build(web, build) == [], f"{web} does not serve the build rolled out after the attack"


@pytest.mark.timeout(600)
def test_what_the_agents_user_can_change_is_never_followed_by_root(deployed: Deployment, tmp_path: Path) -> None:
    """The agent's user owns live/ and shared/: it can point `previous` at the canary and make data.json a
    symlink to a root-only file. `fab prune` (root) then refuses on that host naming the link and removes
    nothing there; `sync-agent status --data` (root, what `fab recover` reads) reports the file unreadable and
    shows none of the canary; the fleet keeps serving what it served."""
    host = "web2"
    build = salted_build(tmp_path / "before-plant", "security-plant")
    rollout(deployed, build)
    plant_canary(deployed, host)
    staged_before = staged_releases(deployed, host)
    previous = deployed.ssh(host, f"readlink {ROOT}/live/previous", check=False).strip()
    shared_data = f"{ROOT}/shared/data.json"
    try:
        planted = as_agent(deployed, host, f"ln -sfn {CANARY} {ROOT}/live/previous && "
                                           f"ln -sf {CANARY}/secret {shared_data}.evil && "
                                           f"mv -f {shared_data}.evil {shared_data}")
        assert planted.returncode == 0, f"the agent's user owns live/ and shared/: {planted.stderr}"

        pruned = deployed.fab("prune", "--keep", "1")
        assert pruned.returncode == 1, pruned.stdout + pruned.stderr
        assert f"{host}: " in pruned.stderr and f"{ROOT}/live/previous is '{CANARY}'" in pruned.stderr, pruned.stderr
        assert staged_releases(deployed, host) == staged_before, "prune removed releases on the host it refused"

        status = deployed.fleet.ssh(host, f"/opt/sync-agent/bin/sync-agent status --root {ROOT} --data --json")
        assert status.returncode == 0, status.stderr
        assert "root-only" not in status.stdout
        assert f"cannot read {shared_data}" in json.loads(status.stdout)["data"]["error"], status.stdout
        assert canary_intact(deployed, host)
        for web in deployed.web_hosts:
            assert deployed.serves_build(web, build) == [], f"{web} stopped serving its release"
    finally:
        deployed.ssh(host, f"ln -sfn ../releases/{previous} {ROOT}/live/previous" if previous else
                           f"rm -f {ROOT}/live/previous", check=False)
        deployed.ssh(host, "systemctl restart sync-agent", check=False)  # it rewrites data.json at start
        deployed.ssh(host, f"rm -rf {CANARY}", check=False)
    try:
        wait_agent_ready(deployed, host)
    except AssertionError as err:
        raise AssertionError(f"{err}; status {deployed.status_of(host)}; its journal:\n"
                             + deployed.ssh(host, "journalctl -u sync-agent -n 40 --no-pager", check=False)) from err
    assert deployed.ssh(host, f"stat -c %F {shared_data}").strip() == "regular file"


def test_the_agents_unit_is_rated_safe_and_has_a_memory_limit_on_every_web_host(deployed: Deployment) -> None:
    """`systemd-analyze security sync-agent.service` on each web host (the running unit, as systemd loaded it)
    rates it 0.9 "SAFE" or better, `systemctl show` has a MemoryMax, and nginx still serves what the agent wrote
    under the unit's UMask=0077 (docs/reliability.md, "The agent's unit")."""
    for host in deployed.web_hosts:
        report = deployed.ssh(host, "systemd-analyze security --no-pager sync-agent.service", check=False)
        found = OVERALL_EXPOSURE.search(report)
        assert found, f"{host}: no overall exposure in systemd-analyze's output:\n{report}"
        exposed = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
        assert float(found[1]) <= 0.9, f"{host}: rated {found[1]} {found[2]}; what is exposed:\n{exposed}"
        limits = deployed.ssh(host, "systemctl show sync-agent -p MemoryMax -p MemoryHigh -p ActiveState")
        shown = dict(line.split("=", 1) for line in limits.split())
        assert shown["ActiveState"] == "active", f"{host}: {limits}"
        assert shown["MemoryMax"].isdigit() and shown["MemoryHigh"].isdigit(), f"{host}: no memory limit: {limits}"
        assert int(shown["MemoryHigh"]) < int(shown["MemoryMax"]), f"{host}: {limits}"
        assert "data" in deployed.env_js(host)  # /_sync/env.js, written by the agent, answers 200 to nginx's user
