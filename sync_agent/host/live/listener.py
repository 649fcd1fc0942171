"""The listening socket: inherited from systemd (a `.socket` unit, sd_listen_fds(3)) or bound to a path.

Under systemd the socket unit owns the path, its owner and mode (nginx's user must connect; the agent runs with
PrivateUsers=yes and could not hand it over), and keeps accepting while the agent restarts. Outside systemd (tests,
a host without the socket unit) the agent binds the configured path itself and removes it when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
BACKLOG = socket.SOMAXCONN  # as a .socket unit's default Backlog=: a restarted agent has every page back at once
SOCKET_MODE = 0o660  # a socket the agent binds itself: its user and group (give nginx's user the group)


def inherited_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The unix stream socket systemd passed (LISTEN_PID is this process, LISTEN_FDS counts them from fd 3), or
    None. The variables are removed, as sd_listen_fds(1) does, so no child inherits them."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not count or not count.isdigit() or pid != str(os.getpid()):
        return None
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            log.warning("systemd passed fd %d, which is not a socket: %s", fd, err)
            continue
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            os.set_inheritable(fd, False)
            sock.setblocking(False)
            return sock
        sock.detach()  # not ours to use, not ours to close
    return None


def bind_socket(path: Path) -> socket.socket:
    """A unix stream socket listening on path; a stale socket file left by an earlier run is replaced (anything
    else at the path is refused, never removed)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_listener(path: Path) -> tuple[socket.socket, bool]:
    """The socket to serve on and whether this process bound it (and so removes it at the end)."""
    sock = inherited_socket()
    if sock is not None:
        where = sock.getsockname()
        if where and where != str(path):
            log.warning("the socket systemd passed listens on %s, the config names %s: serving on %s", where, path,
                        where)
        return sock, False
    return bind_socket(path), True
