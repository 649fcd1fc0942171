"""The fleet harness boots real systemd hosts that SSH, Ansible and testinfra reach, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra  # type: ignore[import-untyped]

from fleet import Fleet
from fleet.system import pid_alive, port_free, ssh_banner

pytestmark = pytest.mark.fleet

BootFleet = Callable[..., Fleet]

REPO = Path(__file__).resolve().parents[2]


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(path))]


def test_each_host_answers_ssh_with_its_own_hostname(fleet: Fleet) -> None:
    for name in ("web1", "web2", "web3", "redis1"):
        result = fleet.ssh(name, "hostname")
        assert (result.returncode, result.stdout.strip()) == (0, name), result.stderr


def test_each_host_runs_systemd_with_sshd_active(fleet: Fleet) -> None:
    for name in fleet.hosts:
        result = fleet.ssh(name, "systemctl is-active ssh.service; cat /proc/1/comm")
        assert result.stdout.split() == ["active", "systemd"], (name, result.stderr)


def test_hosts_bind_sshd_to_their_own_loopback_address_only(fleet: Fleet) -> None:
    addresses = {host.name: host.address for host in fleet.hosts.values()}
    assert addresses == {name: f"{fleet.subnet}.{index}" for index, name in enumerate(
        ("web1", "web2", "web3", "redis1"), start=1)}
    assert all(ssh_banner(address, fleet.port) for address in addresses.values())
    assert port_free(f"{fleet.subnet}.250", fleet.port)  # nothing listens on 0.0.0.0


def test_provisioned_hosts_carry_the_packages_but_do_not_start_them(boot_fleet: BootFleet) -> None:
    # A fleet of its own: the session's fleet may already be deployed to by the time this runs.
    fresh = boot_fleet("test-fresh", subnet="127.0.8", web=1, redis=0, base="provisioned")
    result = fresh.ssh("web1", "dpkg-query -W -f='${Status}\\n' nginx redis-server python3-venv rsync;"
                               " systemctl is-enabled nginx redis-server; ls /etc/nginx/sites-enabled")
    lines = result.stdout.split("\n")
    assert lines[:4] == ["install ok installed"] * 4, result.stdout
    assert lines[4:6] == ["disabled", "disabled"], result.stdout


def test_bare_hosts_have_only_debootstraps_packages_and_reach_the_mirror(boot_fleet: BootFleet) -> None:
    # A fleet of its own: the session's bare fleet is where deploy.yml proves the install path.
    bare = boot_fleet("test-fresh-bare", subnet="127.0.9", web=1, redis=1, base="bare")
    result = bare.ssh("web1", "dpkg-query -W nginx redis-server sudo 2>&1; id deploy 2>&1;"
                                    " apt-get update -q >/dev/null && echo mirror-ok", timeout=120)
    assert "no packages found matching nginx" in result.stdout and "no such user" in result.stdout, result.stdout
    assert result.stdout.strip().endswith("mirror-ok"), result.stdout + result.stderr
    assert bare.ssh("redis1", "hostname").stdout.strip() == "redis1"


def test_testinfra_reaches_a_host_through_the_generated_ssh_config(fleet: Fleet) -> None:
    host = testinfra.get_host("ssh://web2", ssh_config=str(fleet.ssh_config))
    assert host.service("ssh").is_running
    assert host.check_output("hostname") == "web2"


def test_ansible_reaches_every_host_as_root_and_as_deploy_with_become(fleet: Fleet, tmp_path: Path) -> None:
    for user, expected_uid in (("root", "0"), ("deploy", "0")):
        inventory = fleet.write_inventory(tmp_path / f"{user}.yml", user=user)
        result = subprocess.run(
            [Path(sys.executable).with_name("ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.command",
             "-a", "id -u", "-o"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"},
            check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(line.split(" | ")[0] for line in result.stdout.splitlines()) == sorted(fleet.hosts)
        assert all(line.endswith(f"(stdout) {expected_uid}") for line in result.stdout.splitlines()), result.stdout


def test_a_host_powered_off_is_unreachable_and_comes_back_after_power_on(fleet: Fleet) -> None:
    try:
        fleet.power_off("web3", force=True)
        assert fleet.status()[2]["state"] == "off"
        assert fleet.ssh("web3", "true", timeout=30).returncode == 255
        assert fleet.ssh("web1", "hostname").stdout.strip() == "web1"  # the others are untouched
    finally:
        fleet.power_on("web3")
    assert fleet.ssh("web3", "hostname").stdout.strip() == "web3"


def test_a_frozen_host_accepts_tcp_but_never_answers_until_thawed(fleet: Fleet) -> None:
    address = fleet.hosts["web2"].address
    try:
        fleet.freeze("web2")
        with socket.create_connection((address, fleet.port), timeout=2) as sock:
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                sock.recv(4)
    finally:
        fleet.thaw("web2")
    assert fleet.ssh("web2", "hostname").stdout.strip() == "web2"


def test_a_host_added_later_joins_the_inventory(boot_fleet: BootFleet) -> None:
    small = boot_fleet("test-add", subnet="127.0.4", web=1, redis=1, base="provisioned")
    host = small.add_host("web2")
    assert host.address == "127.0.4.3"
    assert small.ssh("web2", "hostname").stdout.strip() == "web2"
    assert "web2:\n          ansible_host: 127.0.4.3" in small.inventory.read_text()


def test_sshd_moves_to_another_port_when_22_is_taken(boot_fleet: BootFleet) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.5.1", 22))
        squatter.listen()
        moved = boot_fleet("test-port", subnet="127.0.5", web=1, redis=0, base="provisioned")
    assert moved.port != 22
    assert f"ansible_port: {moved.port}" in moved.inventory.read_text()
    assert moved.ssh("web1", "hostname").stdout.strip() == "web1"


def test_teardown_leaves_no_mount_no_process_and_no_state(boot_fleet: BootFleet) -> None:
    doomed = boot_fleet("test-down", subnet="127.0.6", web=2, redis=0, base="provisioned")
    pids = doomed.pids()
    assert len(pids) > 4 and _mounts_under(doomed.state_dir)
    doomed.down()
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert _mounts_under(doomed.state_dir) == []
    assert not doomed.state_dir.exists()


def test_up_after_a_killed_run_clears_what_that_run_left(tmp_path: Path) -> None:
    cli = subprocess.Popen([sys.executable, "-m", "fleet", "up", "--name", "test-crash", "--subnet", "127.0.7",
                            "--web", "2", "--redis", "0"], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    crashed = Fleet("test-crash", subnet="127.0.7")
    try:
        deadline = time.monotonic() + 60
        while not list(crashed.state_dir.glob("hosts/*/nspawn.pid")) and time.monotonic() < deadline:
            time.sleep(0.01)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        orphans = [int(path.read_text()) for path in crashed.state_dir.glob("hosts/*/nspawn.pid")]
        assert orphans and all(pid_alive(pid) for pid in orphans)
        again = Fleet("test-crash", subnet="127.0.7")
        again.up(web=1, redis=0)
        assert [pid for pid in orphans if pid_alive(pid)] == []
        assert json.loads((again.state_dir / "fleet.json").read_text())["hosts"] == [
            {"name": "web1", "role": "web", "address": "127.0.7.1"}]
        assert again.ssh("web1", "hostname").stdout.strip() == "web1"
    finally:
        Fleet("test-crash").down()
    assert _mounts_under(crashed.state_dir) == []
