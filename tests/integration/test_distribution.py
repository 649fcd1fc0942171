"""The `frontfleet` distribution as a team installs it: one wheel with the package, the Ansible collection and
both commands; and the agent's wheel that it writes for the hosts is byte-identical to the one a checkout writes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sync_agent.control.agentwheel import build_agent_wheel

pytestmark = pytest.mark.integration

COLLECTION = "ansible_collections/frontfleet/fleet"
BUILD_FROM = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import sync_agent
from sync_agent.control.agentwheel import build_agent_wheel
assert sync_agent.__file__.startswith(sys.argv[1]), sync_agent.__file__
print(build_agent_wheel(Path(sys.argv[2])))
"""


def test_the_distribution_carries_the_package_the_collection_and_both_commands(distribution_wheel: Path) -> None:
    with zipfile.ZipFile(distribution_wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    collection = {f"{COLLECTION}/{name}" for name in (
        "galaxy.yml", "playbooks/deploy.yml", "playbooks/rollback.yml", "roles/frontfleet/defaults/main.yml",
        "roles/sync_agent/files/templates/env.js.j2", "plugins/filter/frontfleet_acl.py")}
    assert collection | {"sync_agent/control/fabtasks.py", "sync_agent/control/host-wheels.lock.json",
                         "sync_agent/host/live/server.py", "sync_agent/host/static/frontfleet.js"} <= names
    assert "frontfleet = sync_agent.cli:frontfleet_main" in entry_points
    assert "sync-agent = sync_agent.cli:main" in entry_points


def test_the_installed_distribution_writes_the_checkouts_agent_wheel_byte_for_byte(distribution_wheel: Path,
                                                                                     tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    old_umask = os.umask(0o002)  # another controller's umask: group-writable files
    try:
        with zipfile.ZipFile(distribution_wheel) as archive:
            archive.extractall(site)  # a wheel's purelib files land in site-packages as they are
    finally:
        os.umask(old_umask)
    built = subprocess.run([sys.executable, "-c", BUILD_FROM, str(site), str(tmp_path / "installed")],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    from_installed = Path(built.stdout.strip())
    from_checkout = build_agent_wheel(tmp_path / "checkout")
    assert from_installed.name == from_checkout.name
    assert from_installed.read_bytes() == from_checkout.read_bytes()
    with zipfile.ZipFile(distribution_wheel) as dist, zipfile.ZipFile(from_checkout) as agent:
        assert {n for n in agent.namelist() if n.startswith("sync_agent/")} == \
            {n for n in dist.namelist() if n.startswith("sync_agent/")}
