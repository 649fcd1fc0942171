"""`fab rollout` when things go wrong on real hosts, and runs as other users and over other routes.

A host powered off, an agent stopped, a canary that fails (also with an agent restarting meanwhile), two
rollouts at once, `fab status` with a silent host; a non-root SSH user with become, and a controller that
reaches Redis only through the SSH tunnel. Every failure must name the host and the cause, exit non-zero,
and leave the fleet on the previous release. Failure runs use short --timeout values.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.deployment import BIN, REPO, Deployment, wait_until
from tests.fleet.fab_builds import (
    Builds,
    assert_fleet_serves,
    fab_json,
    files_of,
    hashed_assets,
    redis_cli,
    release_id,
    releases_on_disk,
    rollout,
    salted_build,
    status_json,
)
from tests.fleet.helpers import wait_healthy

pytestmark = pytest.mark.fleet

TIMEOUT = "5"  # --timeout of the runs that are meant to fail


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds.create(tmp_path_factory.mktemp("builds"), "failures")


@pytest.fixture
def on_a(deployed: Deployment, builds: Builds) -> str:
    """The fleet serves build A (a no-op when it already does); its release id."""
    rollout(deployed, builds.a)
    return release_id(deployed, builds.a)


def switched_at(deployed: Deployment) -> dict[str, str]:
    return {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts}


def assert_nothing_half_staged(deployed: Deployment, hosts: list[str]) -> None:
    """Under releases/ a release directory goes with its verified record; a .partial is never a real name."""
    for host in hosts:
        names = releases_on_disk(deployed, host)
        for name in names:
            if name.endswith(".partial") or name.startswith("."):
                continue
            if not name.endswith(".manifest.json"):
                assert f"{name}.manifest.json" in names, f"{host}: releases/{name} has no verified record: {names}"


def test_rollout_fails_naming_a_powered_off_host_and_switches_no_host(deployed: Deployment, builds: Builds,
                                                                      on_a: str) -> None:
    before = switched_at(deployed)
    deployed.fleet.power_off("web2", force=True)
    try:
        result = deployed.fab("rollout", "--build", str(builds.b), "--timeout", TIMEOUT)
        assert result.returncode != 0
        assert "staging failed, nothing was switched" in result.stderr
        assert "web2: unreachable over SSH" in result.stderr
        for host in ("web1", "web3"):
            assert not deployed.serves_build(host, builds.a), f"{host} left A"
        assert {h: s for h, s in switched_at(deployed).items() if h != "web2"} == \
               {h: s for h, s in before.items() if h != "web2"}
        assert_nothing_half_staged(deployed, ["web1", "web3"])
    finally:
        deployed.fleet.power_on("web2")
        wait_until(lambda: deployed.fleet.ssh("web2", "true").returncode == 0, timeout=60, what="web2's sshd")
        wait_healthy(deployed)
    assert deployed.status_of("web2")["release"] == on_a, "web2 came back on another release"
    assert_fleet_serves(deployed, builds.a)
    code, rows = status_json(deployed)
    assert code == 0 and {r["release"] for r in rows} == {on_a}


def test_rollout_fails_after_the_timeout_naming_a_stopped_agent_and_the_fleet_serves_a_again(
        deployed: Deployment, builds: Builds, on_a: str, agent_control: Any) -> None:
    agent_control("web3")
    result = deployed.fab("rollout", "--build", str(builds.b), "--timeout", TIMEOUT)
    assert result.returncode == 1
    assert f"rollout of {release_id(deployed, builds.b)} failed: web3: silent" in result.stderr
    assert on_a in result.stderr
    assert_fleet_serves(deployed, builds.a)
    code, rows = status_json(deployed)
    assert code == 5 and {r["release"] for r in rows} == {on_a}
    assert fab_json(deployed, "releases", expect=0)[-1]["release"] == on_a


def test_status_shows_a_stopped_agent_as_silent_with_a_nonzero_exit(deployed: Deployment, on_a: str,
                                                                   agent_control: Any) -> None:
    healthy = deployed.fab("status")
    assert healthy.returncode == 0
    for host in deployed.web_hosts:
        line = next(line for line in healthy.stdout.splitlines() if line.startswith(host))
        assert on_a in line and "ready" in line

    agent_control("web2")
    result = wait_until(lambda: (r := deployed.fab("status")).returncode == 5 and r, timeout=20, interval=1,
                        what="`fab status` to flag web2")
    assert "1 host(s) unhealthy: web2 (silent" in result.stderr
    web2 = next(line for line in result.stdout.splitlines() if line.startswith("web2"))
    assert "silent" in web2
    assert all("silent" not in line for line in result.stdout.splitlines() if not line.startswith("web2"))
    rows = {r["host"]: r for r in status_json(deployed)[1]}
    assert not rows["web2"]["healthy"] and "silent" in rows["web2"]["problem"]
    assert rows["web1"]["healthy"] and rows["web3"]["healthy"]


def test_a_canary_failure_leaves_the_other_hosts_untouched(deployed: Deployment, builds: Builds, on_a: str) -> None:
    before = switched_at(deployed)
    deployed.ssh("web1", "systemctl stop nginx")  # the canary host (the first web host) fails its HTTP check
    try:
        result = deployed.fab("rollout", "--build", str(builds.b), "--canary", "1", "--timeout", TIMEOUT)
        assert result.returncode == 1
        assert "web1: HTTP check failed" in result.stderr
        assert f"every host that answers is back on {on_a}" in result.stderr
        assert "web2" not in result.stderr and "web3" not in result.stderr
        after = switched_at(deployed)
        assert after["web1"] != before["web1"], "the canary host should have switched to B, then back"
        assert (after["web2"], after["web3"]) == (before["web2"], before["web3"]), "a non-canary host switched"
        assert deployed.status_of("web1")["release"] == on_a
    finally:
        deployed.ssh("web1", "systemctl start nginx")
    assert_fleet_serves(deployed, builds.a)


def test_publish_runs_the_rollouts_http_check_and_undoes_a_failed_switch(deployed: Deployment, builds: Builds,
                                                                      on_a: str) -> None:
    rollout(deployed, builds.b)
    b_id = release_id(deployed, builds.b)
    back = deployed.fab("rollback")
    assert back.returncode == 0 and f"every host is on {on_a}" in back.stdout  # B stays staged everywhere
    deployed.ssh("web2", "systemctl stop nginx")
    try:
        result = subprocess.run([str(BIN / "sync-agent"), "release", "publish", b_id, "--timeout", TIMEOUT, "--json"],
                                cwd=REPO, env=deployed.env(), capture_output=True, text=True, timeout=120)
        print(result.stdout, result.stderr)
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert list(report["hosts"]) == ["web2"] and report["hosts"]["web2"].startswith("HTTP check failed")
        assert f"every host that answers is back on {on_a}" in result.stderr
    finally:
        deployed.ssh("web2", "systemctl start nginx")
    assert {deployed.status_of(h)["release"] for h in deployed.web_hosts} == {on_a}
    assert_fleet_serves(deployed, builds.a)


def test_during_a_canary_hosts_on_a_serve_b_assets_and_an_agent_restart_moves_nothing(
        deployed: Deployment, builds: Builds, on_a: str, agent_control: Any) -> None:
    b_id = release_id(deployed, builds.b)
    b_files = files_of(builds.b)
    new_assets = sorted(set(hashed_assets(builds.b)) - set(hashed_assets(builds.a)))
    before = switched_at(deployed)
    agent_control("web1")  # the canary host never acknowledges: the canary lasts the whole --timeout
    canary = subprocess.Popen([str(BIN / "fab"), "rollout", "--build", str(builds.b), "--canary", "1",
                               "--timeout", "12"], cwd=REPO, env=deployed.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: redis_cli(deployed, "HGET", "fleettest:desired", "host:web1").strip() == b_id,
                   timeout=30, what="the canary to move web1 to B")
        for host in ("web2", "web3"):
            for path in new_assets:
                status, body, _ = deployed.get(host, path)
                assert (status, body) == (200, b_files[path]), f"{host} /{path} during the canary: {status}"
            assert deployed.get(host, "index.html")[1] == (builds.a / "index.html").read_bytes()

        old_pid = deployed.status_of("web3")["pid"]
        deployed.ssh("web3", "systemctl restart sync-agent")
        wait_until(lambda: deployed.status_of("web3")["pid"] != old_pid, timeout=15, what="web3's agent to restart")
        assert canary.poll() is None, "the canary ended before the checks; they did not run during it"
        assert deployed.status_of("web3")["release"] == on_a
        assert not deployed.serves_build("web3", builds.a)
    finally:
        out, err = canary.communicate(timeout=120)
        print(out, err)
    assert canary.returncode == 1
    assert f"rollout of {b_id} failed: web1" in err
    assert (switched_at(deployed)["web2"], switched_at(deployed)["web3"]) == (before["web2"], before["web3"])
    assert_fleet_serves(deployed, builds.a, ["web2", "web3"])


def test_a_second_rollout_while_one_runs_is_refused_naming_the_holder(deployed: Deployment, on_a: str,
                                                                      tmp_path: Path) -> None:
    first_build = salted_build(tmp_path / "first", "at-once-1", chunks=5, pages=1)
    second_build = salted_build(tmp_path / "second", "at-once-2", chunks=5, pages=1)
    first_id, second_id = release_id(deployed, first_build), release_id(deployed, second_build)
    deployed.ssh("web3", "systemctl stop sync-agent")  # the first rollout then waits for web3 while holding the lock
    try:
        first = subprocess.Popen([str(BIN / "fab"), "rollout", "--build", str(first_build), "--timeout", "60"],
                                 cwd=REPO, env=deployed.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        wait_until(lambda: deployed.status_of("web1")["release"] == first_id, timeout=30,
                   what="the first rollout to switch web1")
        second = deployed.fab("rollout", "--build", str(second_build), "--timeout", TIMEOUT)
        assert second.returncode == 4
        assert f"the deploy lock is held by rollout of {first_id} by " in second.stderr
        assert first.poll() is None, "the first rollout must still be running while the second is refused"
    finally:
        deployed.ssh("web3", "systemctl start sync-agent")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert_fleet_serves(deployed, first_build)
    history = [r["release"] for r in fab_json(deployed, "releases")]
    assert history[-2:] == [on_a, first_id] and second_id not in history
    for host in deployed.web_hosts:
        assert not [name for name in releases_on_disk(deployed, host) if second_id in name], \
            f"{host} has something of the refused rollout"


@contextlib.contextmanager
def root_login_refused(deployed: Deployment) -> Iterator[None]:
    """No host takes the fleet key for root (authorized_keys moved aside); put back through deploy + sudo."""
    hosts = sorted(deployed.fleet.hosts)
    keys = "/root/.ssh/authorized_keys"
    try:
        for host in hosts:
            deployed.ssh(host, f"mv {keys} {keys}.away")
            assert deployed.fleet.ssh(host, "true").returncode == 255, f"{host} still lets root in"
        yield
    finally:
        for host in hosts:
            deployed.fleet.ssh(host, f"sudo -n sh -c 'test -f {keys}.away && mv {keys}.away {keys}'", user="deploy")
        for host in hosts:
            assert deployed.fleet.ssh(host, "true").returncode == 0, f"root's key on {host} was not put back"


def test_rollout_as_a_non_root_user_with_become(deployed: Deployment, tmp_path: Path) -> None:
    as_deploy = deployed.like(tmp_path / "as-deploy", user="deploy")
    assert "ansible_user: deploy" in (tmp_path / "as-deploy" / "hosts.yml").read_text()
    build = salted_build(tmp_path / "build", "non-root", chunks=10, pages=2)
    with root_login_refused(deployed):  # fab must not need root's login anywhere
        result = rollout(as_deploy, build)
        assert result["switched"]
        assert_fleet_serves(deployed, build)
        code, rows = status_json(as_deploy)
        assert code == 0 and {r["release"] for r in rows} == {result["release"]}
        assert fab_json(as_deploy, "rollback")["release"] == result["previous"]
    sudo_log = deployed.ssh("web1", "journalctl --no-pager -q _COMM=sudo")
    assert re.search(r"deploy : .*USER=root ; COMMAND=/opt/sync-agent/bin/sync-agent stage", sudo_log), sudo_log[-2000:]
    owner = deployed.ssh("web1", f"stat -c %U /srv/fleettest/releases/{result['release']}/index.html").strip()
    assert owner == "root", "become: staging runs as root, like the play"


def test_rollout_with_redis_reachable_only_through_the_ssh_tunnel(deployed: Deployment, tmp_path: Path) -> None:
    # "redis1" is a name only the Redis host itself resolves (its /etc/hosts): the controller has no route to it.
    tunnelled = deployed.like(tmp_path / "tunnel", frontfleet_redis_address="redis1",
                                frontfleet_redis_direct=False)
    direct = deployed.like(tmp_path / "direct", frontfleet_redis_address="redis1",
                             frontfleet_redis_direct=True)
    refused = direct.fab("status")
    assert refused.returncode == 3 and "cannot reach Redis" in refused.stderr

    build = salted_build(tmp_path / "build", "tunnel-only", chunks=10, pages=2)
    result = rollout(tunnelled, build)
    assert result["switched"]
    assert_fleet_serves(deployed, build)
    code, rows = status_json(tunnelled)
    assert code == 0 and {r["release"] for r in rows} == {result["release"]}


def _tunnel_master(control: Path) -> int:
    """The pid of the SSH master behind a control socket (0 when none answers)."""
    check = subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "check", "redis1"], capture_output=True,
                           text=True, timeout=10)
    found = re.search(r"pid=(\d+)", check.stderr)
    return int(found.group(1)) if check.returncode == 0 and found else 0


def test_the_tunnel_to_redis_outlives_one_command_and_a_dead_one_is_replaced(
        deployed: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Path(tempfile.mkdtemp(prefix="ff-", dir="/tmp"))  # short: a unix socket path holds 108 bytes
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # this test's own tunnels and fleet cache
    folder = cache / "frontfleet" / "ssh"
    assert deployed.fab("status").returncode == 0
    sockets = list(folder.glob("*.sock"))
    assert len(sockets) == 1 and sockets[0].stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    control = sockets[0].with_suffix(".ctl")
    first = _tunnel_master(control)
    try:
        assert first, "no SSH master kept the tunnel open after the command"
        assert deployed.fab("data-set", "tunnel-probe", "1").returncode == 0
        assert _tunnel_master(control) == first, "the second command opened a tunnel of its own"
        os.kill(first, signal.SIGKILL)  # fab started it; a tunnel that died (host rebooted, network cut)
        wait_until(lambda: _tunnel_master(control) == 0, timeout=10, what="the killed master to be gone")
        again = deployed.fab("data-get", "tunnel-probe")
        assert again.returncode == 0 and again.stdout.strip() == "1"
        assert _tunnel_master(control) not in (0, first)
    finally:
        assert deployed.fab("data-del", "tunnel-probe").returncode == 0
        subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "redis1"], capture_output=True,
                       timeout=10)
        shutil.rmtree(cache)


def test_a_tunnel_socket_path_too_long_for_unix_is_refused_clearly(deployed: Deployment, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ("c" * 80)))
    result = deployed.fab("status")
    assert result.returncode == 2 and "longer than a unix socket path may be" in result.stderr
    assert "XDG_CACHE_HOME" in result.stderr and "Traceback" not in result.stderr


def test_a_host_command_that_hangs_is_killed_at_its_timeout_and_the_host_named(deployed: Deployment) -> None:
    """The stage session's guard: a host that stops answering mid-conversation cannot hold a rollout."""
    from sync_agent.control.inventory import load_fleet
    from sync_agent.control.remote import Remote
    from sync_agent.errors import HostUnreachable

    fleet = load_fleet(str(deployed.inventory))
    host = fleet.web[0]
    answers: list[bytes] = []
    with Remote(fleet) as remote, pytest.raises(HostUnreachable, match="no answer within 2s") as failure:
        remote.stream(host, ["sh", "-c", "echo ready; sleep 60"], lambda _, stdout: answers.append(stdout.readline()),
                      timeout=2)
    assert failure.value.host == host.name
    assert answers == [b"ready\n"], "the conversation ran before the timeout"
