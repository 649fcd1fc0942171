"""Switching and pruning the releases on this host's disk (sync_agent/layout.py says where they live), and
verifying a directory against a manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import FrontfleetError, ManifestError, ReleaseNotStaged, UsageError
from ..fsutil import StrPath, temp_symlink
from ..layout import (
    CURRENT,
    PARTIAL_SUFFIX,
    PREVIOUS,
    check_root_owned,
    current_release,
    is_staged,
    link_target,
    live_dir,
    pool_dir,
    previous_release,
    record_path,
    recorded_releases,
    release_dir,
    release_names,
    releases_dir,
    staged_releases,
    write_record,
)
from ..manifest import Manifest, hash_file, scan_build
from ..protocol import validate_release_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchResult:
    """The outcome of a switch; switched_at_ns is when `current` was renamed (None for a no-op)."""

    release_id: str
    previous: str | None
    switched: bool
    switched_at_ns: int | None


@dataclass(frozen=True)
class PruneResult:
    kept: list[str]
    removed: list[str]
    partials_removed: list[str]
    pool_files_removed: int


# --- verify -------------------------------------------------------------------------------------


def verify(build_dir: StrPath, manifest: Manifest) -> None:
    """Check a directory holds exactly the manifest's files, each with its size and sha256; name the first mismatch."""
    present = dict(scan_build(build_dir))
    expected = {entry.path: entry for entry in manifest.entries}
    missing = sorted(expected.keys() - present.keys())
    if missing:
        raise ManifestError(f"{missing[0]} is missing from {build_dir} ({len(missing)} file(s) missing)")
    extra = sorted(present.keys() - expected.keys())
    if extra:
        raise ManifestError(f"{extra[0]} in {build_dir} is not in the manifest ({len(extra)} extra file(s))")
    for entry in manifest.entries:
        if present[entry.path] != entry.size:
            raise ManifestError(f"{entry.path} has {present[entry.path]} bytes; the manifest says {entry.size}")
    for entry in manifest.entries:
        sha256, _ = hash_file(Path(build_dir) / entry.path)
        if sha256 != entry.sha256:
            raise ManifestError(f"{entry.path} has sha256 {sha256}; the manifest says {entry.sha256}")


def record_verified(root: StrPath, manifest: Manifest) -> Path:
    """Record that releases/<id> was verified against manifest, which makes it staged. Returns the record's path."""
    check_root_owned(root)
    path = write_record(root, manifest)
    log.info("recorded release %s as verified", manifest.release_id)
    return path


# --- switch -------------------------------------------------------------------------------------


class PreparedSwitch:
    """A switch with all its work done but the renames: the release is checked staged and both new links exist
    under temp names. commit() is then two rename(2) calls, so it can wait for a fleet-wide deadline and still
    land on it (docs/protocol.md, switch_at). abort() drops the temp links of a switch that did not happen."""

    def __init__(self, root: StrPath, release_id: str) -> None:
        if not is_staged(root, release_id):
            raise ReleaseNotStaged(
                f"release {release_id!r} is not staged and verified under {root}; stage it first (fab rollout)"
            )
        self.base = Path(root)
        self.live = live_dir(root)
        self.release_id = release_id
        self.before = current_release(self.base)
        self._links: list[tuple[Path, Path]] = []  # (temp, link), current first
        if self.before != release_id:
            if not self.live.is_dir():  # the role made it (R is root's); an agent run by hand makes its own,
                self.live.mkdir()  # readable by nginx whatever the umask (the unit's is 0077)
                os.chmod(self.live, 0o755)
            self._links.append((temp_symlink(self.live / CURRENT, link_target(release_id)), self.live / CURRENT))
            if self.before is not None:
                self._links.append((temp_symlink(self.live / PREVIOUS, link_target(self.before)),
                                    self.live / PREVIOUS))

    def commit(self) -> SwitchResult:
        """Rename the new `current` into place, note the time, then `previous` (it follows, off the clock)."""
        if not self._links:
            return SwitchResult(self.release_id, previous_release(self.base), switched=False, switched_at_ns=None)
        switched_at_ns = 0
        for temp, link in self._links:
            os.replace(temp, link)
            switched_at_ns = switched_at_ns or time.time_ns()
        self._links = []
        # The link's own mtime becomes the switch time, so an agent that restarts reports the same switched_at_ns
        # (it reads it back with lstat) instead of the earlier moment the link was made.
        with suppress(OSError):
            os.utime(self.live / CURRENT, ns=(switched_at_ns, switched_at_ns), follow_symlinks=False)
        log.info("switched current from %s to %s", self.before, self.release_id)
        return SwitchResult(self.release_id, previous_release(self.base), switched=True,
                            switched_at_ns=switched_at_ns)

    def abort(self) -> None:
        for temp, _ in self._links:
            temp.unlink(missing_ok=True)
        self._links = []


def switch(root: StrPath, release_id: str) -> SwitchResult:
    """Serve release_id now: `current` moves by one rename(2), then `previous` takes what `current` was."""
    prepared = PreparedSwitch(root, release_id)
    try:
        return prepared.commit()
    finally:
        prepared.abort()


# --- prune --------------------------------------------------------------------------------------


PARTIAL_GRACE = 60.0  # seconds: a .partial touched more recently may be a staging still running


def prune(root: StrPath, keep: int, protect: set[str] | frozenset[str] = frozenset(),
          partial_grace: float = PARTIAL_GRACE) -> PruneResult:
    """Keep the `keep` newest releases plus current, previous and protect; remove the rest, the `.partial` folders
    no staging touched for partial_grace seconds, then unused pool files.

    Runs as root: it removes nothing unless releases/ and pool/ are root's alone, and nothing when current or
    previous (the agent's links) is not a plain link to a release (UnsafePath names it)."""
    if keep < 0:
        raise UsageError(f"keep must be 0 or more, got {keep}")
    check_root_owned(root)
    staged = [item.release_id for item in staged_releases(root)]
    pinned = {validate_release_id(name) for name in protect}
    pinned.update(name for name in (current_release(root, strict=True), previous_release(root, strict=True))
                  if name is not None)
    kept = [name for index, name in enumerate(staged) if index < keep or name in pinned]
    removed = [name for name in release_names(root) if name not in kept and name not in pinned]
    for name in removed:
        _remove_release(root, name)
    partials = _remove_partials(root, partial_grace)
    pool_removed = _prune_pool(root, kept)
    log.info("pruned %d release(s), %d partial(s), %d pool file(s); kept %s",
             len(removed), len(partials), pool_removed, ", ".join(kept) or "none")
    return PruneResult(kept, removed, partials, pool_removed)


def _remove_release(root: StrPath, release_id: str) -> None:
    """Drop the record first, so a crash halfway leaves an unstaged directory, never a staged half-directory."""
    record_path(root, release_id).unlink(missing_ok=True)
    directory = release_dir(root, release_id)
    if directory.is_dir() and not directory.is_symlink():
        shutil.rmtree(directory)
    log.info("removed release %s", release_id)


def _remove_partials(root: StrPath, grace: float) -> list[str]:
    """Remove the staging folders left by stagings that died; one changed within grace seconds is left alone (a
    staging running now: the deploy lock's next holder's, while an old holder's prune is still on its way)."""
    removed = []
    now = time.time()
    for path in sorted(releases_dir(root).glob(f"*{PARTIAL_SUFFIX}")):
        if not path.is_dir() or path.is_symlink():
            continue
        if now - _last_change(path) < grace:
            log.info("kept %s: a staging changed it less than %.0fs ago", path.name, grace)
            continue
        shutil.rmtree(path)
        removed.append(path.name)
    return removed


def _last_change(tree: Path) -> float:
    """The newest mtime of tree's folders: a staging that writes a file changes its folder's."""
    newest = tree.lstat().st_mtime
    for directory, subdirs, _ in os.walk(tree):
        for name in subdirs:
            with suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(directory, name)).st_mtime)
    return newest


def _prune_pool(root: StrPath, kept: list[str]) -> int:
    """Remove pool files that no kept release's record lists with the same path and content."""
    pool = pool_dir(root)
    if not pool.is_dir():
        return 0
    wanted = _pool_references(root, kept)
    removed = 0
    for directory, _, files in os.walk(pool, topdown=False):
        for name in files:
            path = Path(directory, name)
            if not _still_referenced(path, path.relative_to(pool).as_posix(), wanted):
                path.unlink()
                removed += 1
        if Path(directory) != pool and not os.listdir(directory):
            os.rmdir(directory)
    return removed


def _pool_references(root: StrPath, kept: list[str]) -> dict[str, list[tuple[str, int, Path]]]:
    """path → [(sha256, size, the kept release's own file)] for every file of every kept release."""
    recorded = recorded_releases(root)
    wanted: dict[str, list[tuple[str, int, Path]]] = {}
    for release_id in kept:
        for entry in recorded.get(release_id, ()):
            wanted.setdefault(entry.path, []).append(
                (entry.sha256, entry.size, release_dir(root, release_id) / entry.path)
            )
    return wanted


def _still_referenced(path: Path, relative: str, wanted: dict[str, list[tuple[str, int, Path]]]) -> bool:
    """Same inode as a kept release's file settles it cheaply; otherwise hash only when a size matches."""
    references = wanted.get(relative)
    if not references or path.is_symlink():
        return False
    info = path.stat()
    for _, _, own in references:
        try:
            if os.path.samestat(info, own.stat()):
                return True
        except OSError:
            continue
    if not any(size == info.st_size for _, size, _ in references):
        return False
    try:
        sha256, _ = hash_file(path)
    except OSError as err:
        raise FrontfleetError(f"cannot read pool file {path}: {err.strerror}") from err
    return any(sha256 == expected for expected, _, _ in references)
