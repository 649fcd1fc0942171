"""Wheels of the agent and its dependencies, built on the controller for the hosts' platform.

Hosts need no Python package index: the `sync_agent` role copies these
wheels and installs them with `pip --no-index`. The agent's own wheel is
built reproducibly (SOURCE_DATE_EPOCH), so an unchanged agent gives a
byte-identical file that Ansible neither copies nor restarts for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FrontfleetError, UsageError

log = logging.getLogger(__name__)

# What a host installs besides the agent; the ranges of pyproject.toml's [project.dependencies].
# async-timeout: redis-py needs it on Python < 3.11.3 (Debian 12 has 3.11.2), and pip evaluates
# markers with the controller's Python, not the hosts'.
HOST_REQUIREMENTS = ("redis>=5.0,<8", "hiredis>=3,<4", "Jinja2>=3.1,<4", "async-timeout>=4.0.3")
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest date a zip file can hold


@dataclass(frozen=True)
class WheelSet:
    directory: Path
    files: dict[str, str]  # file name → sha256
    changed: bool


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise FrontfleetError(f"pip {args[0]} failed: {result.stderr.strip()[-800:]}")


def _platform_tags(machine: str) -> list[str]:
    if machine not in ("x86_64", "aarch64"):
        raise UsageError(f"no wheels for hosts on {machine!r}; frontfleet supports x86_64 and aarch64")
    return [f"manylinux_2_17_{machine}", f"manylinux2014_{machine}", f"manylinux_2_28_{machine}"]


def build_wheels(source: Path, dest: Path, python_version: str, machine: str) -> WheelSet:
    """Build the agent's wheel and fetch its dependencies' for (python_version, machine) into dest.

    Dependencies are fetched once per platform; the agent's wheel is rebuilt and
    replaced only when its bytes differ.
    """
    major_minor = "".join(python_version.split(".")[:2])
    dest.mkdir(parents=True, exist_ok=True)
    before = {p.name: _sha256(p) for p in dest.glob("*.whl")}
    lock = dest / "requirements.json"
    wanted = {"python": python_version, "machine": machine, "requirements": list(HOST_REQUIREMENTS)}
    if not lock.exists() or json.loads(lock.read_text()) != wanted:
        platform_args = [arg for tag in _platform_tags(machine) for arg in ("--platform", tag)]
        _pip("download", "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
             "--abi", f"cp{major_minor}", *platform_args, "-d", str(dest), *HOST_REQUIREMENTS)
        lock.write_text(json.dumps(wanted))
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}
        build_dir = Path(scratch) / "src"
        shutil.copytree(source / "sync_agent", build_dir / "sync_agent", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, build_dir / name)
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", scratch, str(build_dir), env=env)
        for built in Path(scratch).glob("*.whl"):
            target = dest / built.name
            if not target.exists() or _sha256(target) != _sha256(built):
                for stale in dest.glob(built.name.split("-")[0] + "-*.whl"):
                    stale.unlink()
                shutil.move(str(built), target)
    after = {p.name: _sha256(p) for p in dest.glob("*.whl")}
    return WheelSet(dest, after, after != before)
