"""The agent's wheel for the hosts is written from the package's files and constants: its metadata says what
pyproject.toml says, and the same files give the same bytes wherever they are read from."""

from __future__ import annotations

import os
import shutil
import tomllib
import zipfile
from pathlib import Path

import pytest

import sync_agent
from sync_agent.control import agentwheel

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_agent_wheel_declares_pyprojects_host_dependencies_and_command() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == agentwheel.DISTRIBUTION
    assert tuple(project["dependencies"]) == agentwheel.REQUIRES_DIST
    assert project["requires-python"] == agentwheel.REQUIRES_PYTHON
    scripts = {f"{name} = {target}" for name, target in project["scripts"].items()}
    assert set(agentwheel.CONSOLE_SCRIPTS) <= scripts


def test_the_same_files_copied_elsewhere_with_other_times_and_modes_give_the_same_bytes(tmp_path: Path) -> None:
    package = Path(sync_agent.__file__).parent
    copy = tmp_path / "site-packages" / "sync_agent"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        if path.is_file():
            path.chmod(0o664)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"byte code is not shipped")
    assert agentwheel.wheel_bytes(copy) == agentwheel.wheel_bytes(package)


def test_the_agent_wheel_is_installable_metadata_and_no_byte_code(tmp_path: Path) -> None:
    wheel = agentwheel.build_agent_wheel(tmp_path)
    assert wheel.name == f"frontfleet-{sync_agent.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"frontfleet-{sync_agent.__version__}.dist-info"
        assert names[-1] == f"{info}/RECORD" and {f"{info}/METADATA", f"{info}/WHEEL"} <= set(names)
        assert "sync_agent/control/host-wheels.lock.json" in names and "sync_agent/py.typed" in names
        assert not [n for n in names if n.endswith(".pyc") or not (n.startswith(("sync_agent/", info)))]
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    first = wheel.stat().st_mtime_ns
    agentwheel.build_agent_wheel(tmp_path)  # unchanged bytes: the file is left as it is
    assert wheel.stat().st_mtime_ns == first


def test_the_collection_carries_the_packages_version() -> None:
    import yaml

    galaxy = yaml.safe_load((REPO / "ansible_collections" / "frontfleet" / "fleet" / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"], galaxy["version"]) == ("frontfleet", "fleet", sync_agent.__version__)
