"""A web host that only a jump host can reach, as Ansible reaches it (`-F` and `-J` in ansible_ssh_common_args):
`ansible-playbook deploy.yml`, `fab rollout` and `fab status` reach it through the jump host; ssh straight to it
is dropped (docs/configuration.md, "Reaching the hosts")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fleet.deployment import Deployment
from tests.fleet.fab_builds import assert_fleet_serves, rollout, salted_build, status_json

pytestmark = pytest.mark.fleet

TARGET, JUMP = "web3", "web1"


def through_jump(deployed: Deployment, folder: Path) -> Deployment:
    """An inventory of the session's fleet in which web3 is reached with `-F <fleet ssh_config> -J web1`."""
    other = deployed.like(folder)
    common = yaml.safe_load((folder / "hosts.yml").read_text())["all"]["vars"]["ansible_ssh_common_args"]
    (folder / "host_vars").mkdir()
    (folder / "host_vars" / f"{TARGET}.yml").write_text(yaml.safe_dump(
        {"ansible_ssh_common_args": f"{common} -F {deployed.fleet.ssh_config} -J {JUMP}"}))
    return other


def test_a_host_reachable_only_through_a_jump_host_is_deployed_rolled_out_and_reported(
        deployed: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jumped = through_jump(deployed, tmp_path / "jump")
    build = salted_build(tmp_path / "build", "jump", chunks=5, pages=1)
    # Ansible's own SSH masters from earlier plays would carry the play past the rule: a control dir of its own
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(tmp_path / "cp"))
    with deployed.fleet.reachable_only_through(TARGET, JUMP):
        direct = deployed.fleet.ssh(TARGET, "true", timeout=30)
        assert direct.returncode == 255, f"{TARGET} still takes SSH straight from the controller"
        play = jumped.playbook()
        assert play.returncode == 0, "deploy.yml did not reach web3 through web1"
        assert f"{TARGET}" in play.stdout and "unreachable=0" in play.stdout
        result = rollout(jumped, build)
        assert result["switched"] and not result["staged"][TARGET]["already_staged"]
        assert_fleet_serves(deployed, build)
        code, rows = status_json(jumped)
        assert code == 0 and {r["host"]: r["release"] for r in rows}[TARGET] == result["release"]


def test_an_ssh_option_an_ssh_config_cannot_say_is_refused_naming_host_and_option(deployed: Deployment,
                                                                                 tmp_path: Path) -> None:
    other = deployed.like(tmp_path / "tty")
    (tmp_path / "tty" / "host_vars").mkdir()
    (tmp_path / "tty" / "host_vars" / "web2.yml").write_text('ansible_ssh_extra_args: "-t"\n')
    before = {r["host"]: r["release"] for r in status_json(deployed)[1]}
    result = other.fab("status")
    assert result.returncode == 2
    assert "web2: ansible_ssh_common_args/ansible_ssh_extra_args: -t cannot be used: it allocates a TTY" in (
        result.stderr)
    assert "Traceback" not in result.stderr
    assert {r["host"]: r["release"] for r in status_json(deployed)[1]} == before
