"""Wheels of the agent and its dependencies, built on the controller for the hosts' platform.

Hosts need no Python package index: the `sync_agent` role copies these
wheels and installs them with `pip --no-index`. The dependencies are pinned by
a lock (host-wheels.lock.json: one version of each package for every platform
the hosts may run, and the sha256 of every wheel file), so two controllers never
ship different libraries to one fleet, and a wheel that does not match its hash
— tampered with, or corrupt — is refused before it is shipped. The agent's own
wheel is written from the package this controller runs (agentwheel.py), the
same bytes from every controller, so an unchanged agent is a byte-identical
file that Ansible neither copies nor restarts for.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FrontfleetError, UsageError
from ..fsutil import user_cache_dir
from .agentwheel import DISTRIBUTION, build_agent_wheel

log = logging.getLogger(__name__)

# What a host installs besides the agent; the ranges of pyproject.toml's [project.dependencies] (agentwheel.py).
# async-timeout: redis-py needs it on Python < 3.11.3 (Debian 12 has 3.11.2), and pip evaluates
# markers with the controller's Python, not the hosts'.
HOST_REQUIREMENTS = ("redis>=5.0,<8", "hiredis>=3,<4", "Jinja2>=3.1,<4", "async-timeout>=4.0.3")
LOCK_FILE = Path(__file__).with_name("host-wheels.lock.json")
# The hosts' platforms the lock covers: Debian 12 and Ubuntu 24.04's Pythons and the next, on both machines.
LOCK_PLATFORMS = tuple((python, machine) for python in ("3.11", "3.12", "3.13") for machine in ("x86_64", "aarch64"))
AGENT_WHEEL_PREFIX = f"{DISTRIBUTION}-"
SETS = "sets"  # dest/sets/<digest>/: each built wheel set, hard-linked, never changed: what the role copies from
SET_MAX_AGE = 24 * 3600.0  # seconds a set nobody built again is kept (a deploy running that long still has it)


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


def _download_args(python_version: str, machine: str) -> list[str]:
    major_minor = "".join(python_version.split(".")[:2])
    platform_args = [arg for tag in _platform_tags(machine) for arg in ("--platform", tag)]
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{major_minor}", *platform_args]


def load_lock(path: Path = LOCK_FILE) -> dict[str, Any]:
    try:
        lock: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FrontfleetError(f"cannot read the wheel lock {path}: {err}; `sync-agent wheels-lock` "
                              "writes it") from err
    return lock


def update_lock(path: Path = LOCK_FILE) -> dict[str, Any]:
    """Resolve HOST_REQUIREMENTS once, then fetch exactly those versions for every platform of LOCK_PLATFORMS and
    record the sha256 of each wheel file (a maintainer's step, with network, when the ranges or platforms change)."""
    packages: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for python_version, machine in LOCK_PLATFORMS:
            folder = Path(scratch) / f"{python_version}-{machine}"
            pins = [f"{name}=={entry['version']}" for name, entry in sorted(packages.items())]
            _pip("download", *_download_args(python_version, machine), "-d", str(folder),
                 *(("--no-deps", *pins) if pins else HOST_REQUIREMENTS))
            for wheel in sorted(folder.glob("*.whl")):
                name, version = wheel.name.split("-")[:2]
                entry = packages.setdefault(name.lower(), {"version": version, "wheels": {}})
                if entry["version"] != version:
                    raise FrontfleetError(f"{name} resolved to {version} for {python_version}/{machine}, not "
                                          f"{entry['version']}")
                entry["wheels"][wheel.name] = _sha256(wheel)
    lock = {"requirements": list(HOST_REQUIREMENTS), "platforms": [list(p) for p in LOCK_PLATFORMS],
            "packages": dict(sorted(packages.items()))}
    path.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
    return lock


def _pinned_requirements(lock: dict[str, Any], folder: Path) -> Path:
    """The lock as a pip requirements file with every hash (pip picks the wheel of the platform asked for)."""
    lines = [f"{name}=={entry['version']} " + " ".join(f"--hash=sha256:{sha}" for sha in entry["wheels"].values())
             for name, entry in sorted(lock["packages"].items())]
    path = folder / "host-requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check_against_lock(dest: Path, lock: dict[str, Any]) -> None:
    """Every dependency wheel in dest is one the lock names, with its hash; others (an older lock's) are removed."""
    hashes = {file: sha for entry in lock["packages"].values() for file, sha in entry["wheels"].items()}
    for wheel in sorted(dest.glob("*.whl")):
        if wheel.name.startswith(AGENT_WHEEL_PREFIX):
            continue  # the agent's own: written by build_wheels, no download
        if wheel.name not in hashes:
            wheel.unlink()
        elif _sha256(wheel) != hashes[wheel.name]:
            raise FrontfleetError(f"{wheel} does not match the sha256 the wheel lock records for it (tampered with "
                                  "or corrupt); nothing was shipped: remove the file and deploy again")


def default_dest(python_version: str, machine: str) -> Path:
    """Where a controller keeps the hosts' wheels unless told otherwise: its user's cache, per platform."""
    return user_cache_dir("wheels") / f"cp{''.join(python_version.split('.')[:2])}-{machine}"


def build_wheels(dest: Path | None, python_version: str, machine: str) -> WheelSet:
    """Write the agent's wheel and fetch its dependencies' for (python_version, machine) into dest (default:
    default_dest).

    Dependencies are the lock's versions, fetched once per platform and checked against the lock's hashes on
    every build; the agent's wheel (agentwheel.py) is replaced only when its bytes differ.
    """
    lock_body = load_lock()
    platform = [".".join(python_version.split(".")[:2]), machine]
    _platform_tags(machine)  # refuses a machine frontfleet ships no wheels for
    if platform not in lock_body["platforms"]:
        raise UsageError(f"the wheel lock has no wheels for hosts on Python {platform[0]} / {machine}; add the "
                         "platform to LOCK_PLATFORMS and run `sync-agent wheels-lock`")
    dest = dest or default_dest(python_version, machine)
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        return _build_locked(dest, lock_body, python_version, machine)


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One build per folder at a time: every controller of this user (two checkouts, two versions, a CI runner's
    parallel jobs) shares the default folder."""
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_locked(dest: Path, lock_body: dict[str, Any], python_version: str, machine: str) -> WheelSet:
    before = {p.name: _sha256(p) for p in dest.glob("*.whl")}
    lock = dest / "requirements.json"
    wanted = {"python": python_version, "machine": machine, "lock": hashlib.sha256(
        json.dumps(lock_body, sort_keys=True).encode()).hexdigest()}
    if not lock.exists() or json.loads(lock.read_text()) != wanted:
        with tempfile.TemporaryDirectory() as scratch:
            _pip("download", *_download_args(python_version, machine), "--no-deps", "--require-hashes",
                 "-d", str(dest), "-r", str(_pinned_requirements(lock_body, Path(scratch))))
        lock.write_text(json.dumps(wanted))
    _check_against_lock(dest, lock_body)
    agent = build_agent_wheel(dest)
    for stale in dest.glob(f"{DISTRIBUTION}-*.whl"):
        if stale != agent:
            stale.unlink()
    after = {p.name: _sha256(p) for p in dest.glob("*.whl")}
    return WheelSet(_snapshot(dest, after), after, after != before)


def _snapshot(dest: Path, files: dict[str, str]) -> Path:
    """The wheel set as built, hard-linked into a folder named by its content. The role copies from there, so a
    build by another controller of this user, which replaces or removes wheels in dest, never changes what a
    running deploy ships (every write in dest is a rename: a link here keeps the bytes it was made with)."""
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
    sets = dest / SETS
    target = sets / digest
    if not target.is_dir():
        temp = sets / f".{digest}.{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        for name in files:
            os.link(dest / name, temp / name)
        os.rename(temp, target)
    os.utime(target)
    for old in sets.iterdir():
        if old != target and time.time() - old.stat().st_mtime > SET_MAX_AGE:
            shutil.rmtree(old, ignore_errors=True)
    return target
