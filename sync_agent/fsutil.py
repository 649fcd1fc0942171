"""Filesystem primitives that keep what nginx serves whole: atomic writes, atomic symlinks, one syncfs.

Every file frontfleet updates in place goes through `atomic_write`, every symlink
through `replace_symlink`: a reader sees the old version or the new one, never a
mix. There is no fsync per file (Redis is the durable copy and the agent rewrites
what it serves at start); staging makes a release durable with one `syncfs`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import UnsafePath

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


# --- paths a root-run step may trust ------------------------------------------------------------------------

# A folder opened without following a symlink at its last component (every step that must not follow one).
DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_nofollow(path: StrPath, trusted: bool = False) -> int:
    """An fd of the folder path, reached from / one component at a time with openat(O_NOFOLLOW): a symlink
    anywhere on the way is refused, not followed. With trusted, every folder on the way must also be one that
    only root or this process' user can change (else another user could swap what comes after it)."""
    absolute = os.path.abspath(os.fspath(path))
    fd = os.open("/", DIR_NOFOLLOW)
    walked = "/"
    try:
        if trusted:
            _check_trusted(fd, walked)
        for name in [part for part in absolute.split("/") if part]:
            walked = os.path.join(walked, name)
            try:
                child = os.open(name, DIR_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{walked} is {_what_is(fd, name)}, not a folder: not followed") from err
                raise
            os.close(fd)
            fd = child
            if trusted:
                _check_trusted(fd, walked)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _what_is(dir_fd: int, name: str) -> str:
    try:
        return f"a symlink to {os.readlink(name, dir_fd=dir_fd)!r}"
    except OSError:
        return "not a folder"


def _check_trusted(fd: int, path: str) -> None:
    """Owned by root or by us, and writable by nobody else unless sticky (like /tmp: others cannot rename what
    is ours there)."""
    info = os.fstat(fd)
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafePath(f"{path} is owned by uid {info.st_uid}, so that user could replace what is inside it; "
                         "a step run as root works only in folders root owns (deploy the sync_agent role again "
                         "to lay out the release root)")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                         "a step run as root works only in folders no other user can change")


def check_trusted_dir(path: StrPath) -> None:
    """Refuse (UnsafePath) a folder that a symlink or another user's folder leads to, or that another user owns."""
    os.close(open_dir_nofollow(path, trusted=True))


def read_nofollow(path: StrPath, limit: int) -> bytes:
    """The bytes of a regular file that another user may control (the agent's shared/ files), read without
    following a symlink anywhere on its path, without blocking on a FIFO, and at most limit bytes."""
    target = Path(path)
    dir_fd = open_dir_nofollow(target.parent)
    try:
        try:
            fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UnsafePath(f"{target} is {_what_is(dir_fd, target.name)}: not followed") from err
            raise
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{target} is not a regular file: not read")
        if info.st_size > limit:
            raise UnsafePath(f"{target} has {info.st_size} bytes, more than the {limit} it may have: not read")
        return handle.read(limit + 1)[:limit]
