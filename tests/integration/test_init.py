"""`frontfleet init` in a team's folder: a starter inventory, an ansible.cfg and a fabfile that Ansible and `fab`
read as they are; an existing file is never overwritten without --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def run(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=folder, capture_output=True, text=True,
                          timeout=120, env={**env, "PATH": f"{BIN}:{env['PATH']}"})


def test_init_writes_a_folder_that_fab_and_ansible_read_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    result = run(folder, "frontfleet", "init")
    assert result.returncode == 0, result.stderr
    assert "ansible-playbook frontfleet.fleet.deploy" in result.stdout
    for name in ("ansible.cfg", "fabfile.py", "inventory/production/hosts.yml",
                 "inventory/production/group_vars/all/vars.yml", "inventory/production/.gitignore"):
        assert (folder / name).is_file(), name
    tasks = run(folder, "fab", "--list")
    assert tasks.returncode == 0, tasks.stderr
    assert {"rollout", "rollback", "status", "data-set", "releases"} <= {line.split()[0] for line in
                                                                      tasks.stdout.splitlines()[1:] if line.strip()}
    graph = run(folder, "ansible-inventory", "--list")
    assert graph.returncode == 0, graph.stderr
    inventory = json.loads(graph.stdout)
    assert inventory["web"]["hosts"] == ["web1", "web2"] and inventory["redis"]["hosts"] == ["redis1"]
    assert inventory["_meta"]["hostvars"]["web1"]["frontfleet_app"] == "shop"


def test_init_overwrites_nothing_without_force(tmp_path: Path) -> None:
    assert run(tmp_path, "frontfleet", "init", "--app", "shop").returncode == 0
    (tmp_path / "fabfile.py").write_text("# the team's own\n")
    again = run(tmp_path, "frontfleet", "init")
    assert again.returncode == 2
    assert "frontfleet:" in again.stderr and "fabfile.py" in again.stderr and "nothing was written" in again.stderr
    assert (tmp_path / "fabfile.py").read_text() == "# the team's own\n"
    forced = run(tmp_path, "frontfleet", "init", "--force", "--json")
    assert forced.returncode == 0 and "ansible.cfg" in json.loads(forced.stdout)["files"]
    assert "sync_agent.control.fabtasks" in (tmp_path / "fabfile.py").read_text()
