"""The agent's own wheel for the hosts, written from the `sync_agent` package this controller runs.

A wheel is a zip of the package's files and a dist-info folder. Written here, byte by byte, it is the same
file from every controller that runs the same frontfleet — a checkout or the installed `frontfleet`
distribution, whatever its setuptools, wheel, zlib, umask or file times: entries sorted, stored (not
deflated: zlib builds differ in their output), dated 1980-01-01, mode 0644, and metadata written from the
constants below rather than from the controller's install. So the controller needs no build tools at deploy
time, and an unchanged agent is a byte-identical file that Ansible neither copies nor restarts for.

On a host the wheel installs the distribution `frontfleet` with the host's dependencies only (the controller's
tools are the `controller` extra of the same distribution, never installed there).
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

import sync_agent

from ..fsutil import atomic_write

DISTRIBUTION = "frontfleet"
# pyproject.toml's [project.dependencies], as a host installs them (tests/unit/test_agent_wheel.py keeps the two
# equal), and [project.scripts]' command that runs on hosts.
REQUIRES_DIST = ("redis[hiredis]>=5.0,<8", "Jinja2>=3.1,<4")
REQUIRES_PYTHON = ">=3.11"
CONSOLE_SCRIPTS = ("sync-agent = sync_agent.cli:main",)
SUMMARY = "Ship a frontend's static build to a fleet of web hosts and keep them in sync through Redis."
# What the package holds besides its modules: pyproject.toml's package-data for sync_agent.
DATA_SUFFIXES = (".py", ".typed", ".lua", ".json", ".js")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
_FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--


def wheel_name(version: str = sync_agent.__version__) -> str:
    return f"{DISTRIBUTION}-{version}-py3-none-any.whl"


def package_files(package_dir: Path | None = None) -> dict[str, bytes]:
    """The package's files (modules and data, no byte code) as the wheel holds them: "sync_agent/…" → bytes."""
    root = (package_dir or Path(sync_agent.__file__).parent).resolve()
    return {f"sync_agent/{path.relative_to(root).as_posix()}": path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts}


def _metadata(version: str) -> dict[str, bytes]:
    info = f"{DISTRIBUTION}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {DISTRIBUTION}", f"Version: {version}", f"Summary: {SUMMARY}",
                "License: MIT", f"Requires-Python: {REQUIRES_PYTHON}", *(f"Requires-Dist: {r}" for r in REQUIRES_DIST)]
    wheel = ["Wheel-Version: 1.0", "Generator: frontfleet (sync_agent.control.agentwheel)", "Root-Is-Purelib: true",
             "Tag: py3-none-any"]
    return {f"{info}/METADATA": "\n".join(metadata).encode() + b"\n",
            f"{info}/WHEEL": "\n".join(wheel).encode() + b"\n",
            f"{info}/entry_points.txt": "\n".join(["[console_scripts]", *CONSOLE_SCRIPTS]).encode() + b"\n"}


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_bytes(package_dir: Path | None = None, version: str = sync_agent.__version__) -> bytes:
    """The wheel's bytes: the same for the same package files and version, wherever they are read."""
    entries = {**package_files(package_dir), **_metadata(version)}
    record = f"{DISTRIBUTION}-{version}.dist-info/RECORD"
    lines = [_record_line(name, data) for name, data in entries.items()] + [f"{record},,"]
    entries[record] = ("\n".join(lines) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():  # the package's files sorted, then METADATA, WHEEL, …, RECORD last
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = _FILE_MODE
            info.create_system = 3  # Unix, whatever the controller runs
            archive.writestr(info, data)
    return buffer.getvalue()


def build_agent_wheel(dest: Path, package_dir: Path | None = None) -> Path:
    """Write the agent's wheel into dest (atomically; left as it is when its bytes are the same); its path."""
    data = wheel_bytes(package_dir)
    target = dest / wheel_name()
    if not target.exists() or target.read_bytes() != data:
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    return target
