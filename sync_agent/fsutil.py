"""Filesystem primitives that keep what nginx serves whole: atomic writes, atomic symlinks, one syncfs.

Every file frontfleet updates in place goes through `atomic_write`, every symlink
through `replace_symlink`: a reader sees the old version or the new one, never a
mix. There is no fsync per file (Redis is the durable copy and the agent rewrites
what it serves at start); staging makes a release durable with one `syncfs`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def _temp_name(target: Path) -> Path:
    """A hidden, unique sibling of target: same directory, so rename(2) stays on one filesystem."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_temp(target: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write data to a new hidden sibling of target (no fsync: Redis is the durable copy); return its path."""
    temp = _temp_name(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask must not hide the file from nginx
            handle.write(data)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def atomic_write(path: StrPath, data: bytes, mode: int = 0o644) -> None:
    """Replace path's content with data in one rename, so readers never see a partial file."""
    target = Path(path)
    temp = write_temp(target, data, mode)
    try:
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def user_cache_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/frontfleet/<name> (~/.cache/…): what the controller keeps for its user alone."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "frontfleet" / name


def private_dir(path: Path) -> Path:
    """path, created if it is missing, 0700 whatever the umask or an earlier run left."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def temp_symlink(link: StrPath, target: StrPath) -> Path:
    """A new hidden sibling of link pointing at target, ready to be renamed over link; returns its path."""
    temp = _temp_name(Path(link))
    os.symlink(os.fspath(target), temp)
    return temp


def replace_symlink(link: StrPath, target: StrPath) -> None:
    """Point link at target atomically: a temp symlink beside it, then rename(2) over it."""
    temp = temp_symlink(link, target)
    try:
        os.replace(temp, link)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _libc(name: str) -> Callable[..., int] | None:
    try:
        func: Callable[..., int] = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    return func


_SYNCFS = _libc("syncfs")


def syncfs(path: StrPath) -> None:
    """Flush the one filesystem that holds path (a whole release at once), or everything without syncfs(2)."""
    if _SYNCFS is None:
        log.debug("syncfs(2) is unavailable; falling back to sync(2)")
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _SYNCFS(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs({os.fspath(path)}) failed: {os.strerror(errno)}")
    finally:
        os.close(fd)
