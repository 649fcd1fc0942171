"""Lay out a release root so that nothing run as root follows a path the agent's user can change, and move a root
laid out by an earlier frontfleet (the agent owned R, `current` and `previous` sat in R) to it in place.

Root owns R, `releases/` and `pool/`; the agent's user owns `live/` (its `current` and `previous` links),
`shared/`, and `private/` (mode 0750: the private data and what renders from it; nginx's user cannot enter
it). Every step works from a folder fd opened with O_NOFOLLOW and changes entries through it (fchownat,
symlinkat, renameat), so a symlink planted by the agent's user is refused by name, never followed. The sync_agent
role runs this as `sync-agent layout` on every deploy; a second run changes nothing.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnsafePath, UsageError
from ..fsutil import DIR_NOFOLLOW, StrPath, open_dir_nofollow
from ..layout import CURRENT, LIVE, POOL, PREVIOUS, PRIVATE, RELEASES, SHARED, link_target

log = logging.getLogger(__name__)

_MODE = 0o755
_PRIVATE_MODE = 0o750  # the agent's user and group only: never nginx's (host/shared_data.py PRIVATE_DIR_MODE)


@dataclass
class LayoutPlan:
    """What laying out a root changed (or, in a dry run, would change), one line a change."""

    root: Path
    dry_run: bool
    changes: list[str] = field(default_factory=list)

    def note(self, change: str) -> bool:
        """Record a change; True when it should be made (not a dry run)."""
        self.changes.append(change)
        log.info("%s%s", "would: " if self.dry_run else "", change)
        return not self.dry_run


def lay_out(root: StrPath, agent_user: str, dry_run: bool = False) -> LayoutPlan:
    """Make root the layout above, from nothing or from the earlier layout; refuse (UnsafePath) a symlink or a
    non-folder where a folder belongs, naming it, before touching anything beneath it."""
    try:
        agent = pwd.getpwnam(agent_user)
    except KeyError as err:
        raise UsageError(f"no user {agent_user!r} on this host (the sync_agent role creates it)") from err
    base = Path(os.path.abspath(os.fspath(root)))
    plan = LayoutPlan(base, dry_run)
    parent = open_dir_nofollow(base.parent, trusted=True)
    try:
        with _folder(plan, parent, base, 0, 0) as root_fd:
            if root_fd is None:  # a dry run on a host that has no root yet: everything below is new
                for name in (RELEASES, POOL, LIVE, SHARED, PRIVATE, CURRENT):
                    plan.note(f"create {base / name}")
                return plan
            for name in (RELEASES, POOL):
                with _folder(plan, root_fd, base / name, 0, 0) as fd:
                    if fd is not None:
                        _own_tree(plan, fd, base / name)
            with _folder(plan, root_fd, base / SHARED, agent.pw_uid, agent.pw_gid):
                pass
            with _folder(plan, root_fd, base / PRIVATE, agent.pw_uid, agent.pw_gid, _PRIVATE_MODE):
                pass
            with _folder(plan, root_fd, base / LIVE, agent.pw_uid, agent.pw_gid) as live_fd:
                for name in (CURRENT, PREVIOUS):
                    _move_link(plan, root_fd, live_fd, base, name, (agent.pw_uid, agent.pw_gid))
    finally:
        os.close(parent)
    return plan


@contextmanager
def _folder(plan: LayoutPlan, parent_fd: int, path: Path, uid: int, gid: int,
            want: int = _MODE) -> Iterator[int | None]:
    """An fd of the folder path (created if missing), owned by uid:gid with mode want (0755 unless said); None in a
    dry run that would create it."""
    created = False
    try:
        info = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        if not plan.note(f"create {path}"):
            yield None
            return
        os.mkdir(path.name, want, dir_fd=parent_fd)
        created = True
    else:
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(f"{path} is {_describe(parent_fd, path.name, info)}, not a folder: nothing was "
                             "changed; check what made it (the agent's user?), remove it, then deploy again")
    fd = os.open(path.name, DIR_NOFOLLOW, dir_fd=parent_fd)
    try:
        info = os.fstat(fd)
        owned = (info.st_uid, info.st_gid) == (uid, gid)
        if not owned and (created or plan.note(f"chown {path} {info.st_uid}:{info.st_gid} -> {uid}:{gid}")):
            os.fchown(fd, uid, gid)
        mode = stat.S_IMODE(info.st_mode)
        if mode != want and (created or plan.note(f"chmod {path} {mode:04o} -> {want:04o}")):
            os.fchmod(fd, want)
        yield fd
    finally:
        os.close(fd)


def _describe(parent_fd: int, name: str, info: os.stat_result) -> str:
    if stat.S_ISLNK(info.st_mode):
        return f"a symlink to {os.readlink(name, dir_fd=parent_fd)!r}"
    return "a file"


def _own_tree(plan: LayoutPlan, fd: int, path: Path) -> None:
    """Give root every entry under a folder that root alone must own (under the earlier layout the agent's user
    could have added its own); symlinks are changed themselves, never followed."""
    changed = 0
    for _, _, _, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for name in os.listdir(dir_fd):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if info.st_uid != 0 or info.st_gid != 0:
                changed += 1
                if not plan.dry_run:
                    os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
    if changed:
        plan.note(f"chown {changed} entr{'y' if changed == 1 else 'ies'} under {path} to root")


def _move_link(plan: LayoutPlan, root_fd: int, live_fd: int | None, base: Path, name: str,
               owner: tuple[int, int]) -> None:
    """The earlier R/<name> -> releases/<id> becomes live/<name> -> ../releases/<id>, and R/<name> root's fixed
    link to live/<name> (an nginx config from before the upgrade keeps serving through it)."""
    old = _readlink(root_fd, name)
    if old is not None and old.startswith(f"{RELEASES}/") and _readlink(live_fd, name) is None:
        release_id = old.removeprefix(f"{RELEASES}/")
        if plan.note(f"move {base / name} -> {old} to {base / LIVE / name} -> {link_target(release_id)}"):
            assert live_fd is not None  # only a dry run has no live/ yet
            _replace_link(live_fd, name, link_target(release_id), owner)
    compat = f"{LIVE}/{name}"
    if old != compat and (old is not None or name == CURRENT):
        if old is None and _exists(root_fd, name):
            raise UnsafePath(f"{base / name} is not a symlink: nothing was changed; move it away, then deploy again")
        if plan.note(f"link {base / name} -> {compat}"):
            _replace_link(root_fd, name, compat, (0, 0))


def _readlink(dir_fd: int | None, name: str) -> str | None:
    if dir_fd is None:
        return None
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:  # missing, or not a symlink
        return None


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _replace_link(dir_fd: int, name: str, target: str, owner: tuple[int, int]) -> None:
    temp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        os.chown(temp, *owner, dir_fd=dir_fd, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(temp, dir_fd=dir_fd)
        raise
