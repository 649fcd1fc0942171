"""Small OS helpers for the fleet harness: commands, mounts, processes, ports.

They are kept apart from the harness so that the harness reads as "what a fleet
does" and this module as "how Linux is asked to do it".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: The controller's tools the harness needs, with the Debian package that brings each.
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
}


class FleetError(RuntimeError):
    """Anything the harness could not do; the message says what to do about it."""


def missing_tools() -> dict[str, str]:
    """The required tools that are not installed, mapped to the package that brings them."""
    found = {}
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            found[tool] = package
    return found


def apt_command(packages: Iterable[str]) -> str:
    """The command a user runs to install what is missing."""
    return "apt-get update && apt-get install -y " + " ".join(sorted(set(packages)))


def run(cmd: Sequence[str | os.PathLike[str]], *, timeout: float | None = None,
        check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise a FleetError that carries it on failure."""
    args = [str(part) for part in cmd]
    log.debug("run: %s", " ".join(args))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input_text,
                          stdin=None if input_text is not None else subprocess.DEVNULL, check=False)
    if check and proc.returncode != 0:
        raise FleetError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# --- mounts -----------------------------------------------------------------

def _unescape_mount_path(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = _unescape_mount_path(line.split()[4])
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything at or below `path`; a busy mount is detached lazily rather than left behind."""
    for point in mounts_under(path):
        proc = run(["umount", "-R", point], check=False)
        if proc.returncode != 0 and point in mounts_under(point):
            log.warning("umount %s failed (%s); detaching it lazily", point, proc.stderr.strip())
            run(["umount", "-R", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """Remove a directory tree without ever crossing into a mount (a stale /proc or /dev bind)."""
    if not path.exists():
        return
    unmount_under(path)
    if mounts_under(path):
        raise FleetError(f"{path} still has mounts: {mounts_under(path)}; unmount them by hand")
    run(["rm", "-rf", "--one-file-system", path])


# --- processes --------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid is [1])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (this machine's PID 1 may never reap)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send a signal, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of the pids is alive; reap those that are our own children."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                pending.discard(pid)
        if not pending:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- ports ------------------------------------------------------------------

def port_free(address: str, port: int) -> bool:
    """Can a server bind address:port? SO_REUSEADDR as sshd sets it, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ssh_banner(address: str, port: int, timeout: float = 1.0) -> bool:
    """True once an SSH server answers with its banner (a TCP accept alone is not enough)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False
