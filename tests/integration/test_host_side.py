"""A web host needs redis-py and Jinja2, nothing else: the host side installed from the wheels the `sync_agent` role
installs, in a virtualenv of its own, imports and runs without anything of the control side."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from sync_agent.control.wheels import build_wheels

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The distributions a host may hold: the agent, what pyproject.toml's [project.dependencies] pull in, the
# installer itself.
HOST_DISTRIBUTIONS = {"frontfleet", "redis", "hiredis", "jinja2", "markupsafe", "async-timeout", "pip"}
# Importing the host side must load none of these.
CONTROL_ONLY = ("sync_agent.control", "ansible", "fabric", "invoke", "paramiko", "rich", "yaml")

IMPORT_EVERY_HOST_MODULE = """
import importlib, json, pkgutil, sys
import sync_agent, sync_agent.host
names = ["sync_agent"]
names += [f"sync_agent.{m.name}" for m in pkgutil.iter_modules(sync_agent.__path__) if m.name != "control"]
names += [f"sync_agent.host.{m.name}" for m in pkgutil.iter_modules(sync_agent.host.__path__)]
for name in names:
    if name != "sync_agent.__main__":
        importlib.import_module(name)
from sync_agent.cli import build_parser
build_parser()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"ansible", "fabric", "invoke", "paramiko", "rich",
                                                               "yaml"} or m.startswith("sync_agent.control"))
print(json.dumps({"imported": names, "control_side_loaded": loaded}))
"""


@pytest.fixture(scope="module")
def host_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with what the sync_agent role installs on a host: the agent's wheels, with --no-index."""
    base = tmp_path_factory.mktemp("host")
    wheels = build_wheels(base / "wheels", f"{sys.version_info.major}.{sys.version_info.minor}",
                          platform.machine())
    venv.create(base / "venv", with_pip=True)
    python = base / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels.directory),
                    "frontfleet"], check=True, capture_output=True, timeout=300)
    return base / "venv"


def test_a_host_holds_only_the_agent_and_its_two_dependencies(host_venv: Path) -> None:
    listed = subprocess.run([str(host_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True)
    installed = {row["name"].lower() for row in json.loads(listed.stdout)}
    assert installed - {"setuptools"} <= HOST_DISTRIBUTIONS, installed
    assert {"frontfleet", "redis", "jinja2"} <= installed


def test_every_host_module_imports_without_the_control_side(host_venv: Path) -> None:
    result = subprocess.run([str(host_venv / "bin" / "python"), "-I", "-c", IMPORT_EVERY_HOST_MODULE],
                            capture_output=True, text=True, cwd=host_venv)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"sync_agent.host.agent", "sync_agent.host.staging", "sync_agent.host.live", "sync_agent.layout",
            "sync_agent.cli"} <= set(report["imported"])
    assert report["control_side_loaded"] == []


def test_the_host_commands_run_from_the_host_install(host_venv: Path, tmp_path: Path) -> None:
    agent = str(host_venv / "bin" / "sync-agent")
    status = subprocess.run([agent, "status", "--root", str(tmp_path), "--json"], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"current": None, "previous": None, "staged": [], "applied": None}
    for command in ([agent, "run", "--help"], [str(host_venv / "bin" / "python"), "-m", "sync_agent", "run", "--help"]):
        shown = subprocess.run(command, capture_output=True, text=True)
        assert shown.returncode == 0 and "--config" in shown.stdout, shown.stderr
    missing = subprocess.run([agent, "run", "--config", str(tmp_path / "none.toml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read the config file" in missing.stderr


def test_the_host_install_carries_the_live_streams_browser_client(host_venv: Path) -> None:
    read = "from sync_agent.host.shared_data import CLIENT_SOURCE; print(CLIENT_SOURCE.read_text())"
    shipped = subprocess.run([str(host_venv / "bin" / "python"), "-I", "-c", read], capture_output=True, text=True,
                             cwd=host_venv)
    assert shipped.returncode == 0, shipped.stderr
    assert "export function subscribe" in shipped.stdout
