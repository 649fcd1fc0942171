"""Where a release lives on a host's disk, for both sides: the paths, the verified records, what is staged, and
which release `current` and `previous` name. Nothing here writes a release; host/staging.py and host/releases.py do.

Layout under a release root R (`frontfleet_release_root`); root owns R, releases/ and pool/, the agent's user
owns only live/ and shared/, so nothing run as root ever works in a folder the agent could swap (docs/releases.md)::

    R/releases/<id>/                    an immutable release directory, never changed once renamed into place
    R/releases/<id>.manifest.json       its verified record (the manifest plus "verified": true), not served
    R/releases/<id>.partial/            a release being staged; never a target, removed on failure and by prune
    R/live/current  -> ../releases/<id> the release nginx serves (a relative symlink, replaced with rename(2))
    R/live/previous -> ../releases/<id> the release current pointed to before the last switch
    R/current -> live/current           root's fixed link, for what still reads R/current (an older nginx config)
    R/pool/<path>                       hard links to the immutable files (assets/, _next/static/, static/) of
                                        every staged release, so the hashed assets of each kept release stay servable
    R/shared/                           the agent's (data.json, rendered templates); nothing here touches it
    R/private/                          the agent's, 0750, never served: private data and templates that may see it

A release is *staged* when both its directory and its record exist: that is all
`switch` checks, so switching costs two stats and a rename, never a re-hash.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

from .errors import ManifestError, ProtocolError, UnsafePath
from .fsutil import StrPath, atomic_write, check_trusted_dir
from .manifest import Entry, Manifest
from .protocol import validate_release_id

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
CURRENT = "current"
PREVIOUS = "previous"
LIVE = "live"
RELEASES = "releases"
POOL = "pool"
SHARED = "shared"
PRIVATE = "private"


class StagedRelease(NamedTuple):
    release_id: str
    recorded_at: float  # mtime of the record, seconds since the epoch


# --- where things live --------------------------------------------------------------------------


def releases_dir(root: StrPath) -> Path:
    return Path(root) / RELEASES


def live_dir(root: StrPath) -> Path:
    """The agent's folder of links: `current` and `previous`."""
    return Path(root) / LIVE


def link_target(release_id: str) -> str:
    """What live/current and live/previous hold for a release: relative, so the tree can move."""
    return f"../{RELEASES}/{validate_release_id(release_id)}"


def release_dir(root: StrPath, release_id: str) -> Path:
    return releases_dir(root) / validate_release_id(release_id)


def record_path(root: StrPath, release_id: str) -> Path:
    """The verified record of a release: beside its directory, outside the served tree."""
    return releases_dir(root) / f"{validate_release_id(release_id)}{RECORD_SUFFIX}"


def partial_dir(root: StrPath, release_id: str) -> Path:
    return releases_dir(root) / f"{validate_release_id(release_id)}{PARTIAL_SUFFIX}"


def pool_dir(root: StrPath) -> Path:
    return Path(root) / POOL


def check_root_owned(root: StrPath) -> None:
    """Before a step run as root writes or removes releases: R, releases/ and pool/ (where they exist) are
    reached without a symlink and can be changed by nobody but root (UnsafePath names the one that can)."""
    base = Path(root)
    while not os.path.lexists(base) and base != base.parent:  # a first staging creates R under its parent
        base = base.parent
    check_trusted_dir(base)
    for path in (releases_dir(root), pool_dir(root)):
        if os.path.lexists(path):
            check_trusted_dir(path)


def write_record(root: StrPath, manifest: Manifest) -> Path:
    """Write the verified record of a release (the manifest plus "verified": true), atomically."""
    path = record_path(root, manifest.release_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**manifest.to_json(), "verified": True}, ensure_ascii=False).encode("utf-8"))
    return path


def read_record(root: StrPath, release_id: str) -> Manifest:
    """The trusted manifest of a staged release; ManifestError if it is missing, unverified or damaged."""
    path = record_path(root, release_id)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"cannot read the record {path}: {err.strerror}") from err
    try:
        verified = json.loads(raw).get("verified") is True
    except (ValueError, AttributeError) as err:
        raise ManifestError(f"the record {path} is not a JSON object") from err
    if not verified:
        raise ManifestError(f"the record {path} is not marked verified")
    manifest = Manifest.from_json(raw)
    if manifest.release_id != release_id:
        raise ManifestError(f"the record {path} describes release {manifest.release_id}, not {release_id}")
    return manifest


def recorded_releases(root: StrPath) -> dict[str, tuple[Entry, ...]]:
    """Every staged release (record and directory both present) with its record's entries; damaged ones skipped.

    Read without validating again: this host wrote each record itself after verifying the release,
    and `Manifest.from_json` costs about 25 ms per 2,000 entries on a fleet host, this about 3 —
    it runs on every staging and prune, once per kept release.
    """
    found: dict[str, tuple[Entry, ...]] = {}
    for path in sorted(releases_dir(root).glob(f"*{RECORD_SUFFIX}")):
        release_id = path.name[: -len(RECORD_SUFFIX)]
        try:
            if release_dir(root, release_id).is_dir():
                found[release_id] = _record_entries(path)
        except Exception as err:  # one bad record must not stop staging of the next release
            log.warning("ignoring the record %s: %s", path, err)
    return found


def _record_entries(path: Path) -> tuple[Entry, ...]:
    body = json.loads(path.read_bytes())
    if not isinstance(body, dict) or body.get("verified") is not True:
        raise ManifestError(f"the record {path} is not marked verified")
    return tuple(Entry(raw["path"], raw["size"], raw["sha256"]) for raw in body["entries"])


# --- what is on disk ----------------------------------------------------------------------------


def is_staged(root: StrPath, release_id: str) -> bool:
    """Staged and verified: the record and the directory both exist. Cheap on purpose; never re-hashes."""
    try:
        directory = release_dir(root, release_id)
    except ProtocolError:
        return False
    return directory.is_dir() and not directory.is_symlink() and record_path(root, release_id).is_file()


def staged_releases(root: StrPath) -> list[StagedRelease]:
    """Every staged release with the mtime of its record, newest first."""
    found = []
    for path in releases_dir(root).glob(f"*{RECORD_SUFFIX}"):
        release_id = path.name[: -len(RECORD_SUFFIX)]
        if is_staged(root, release_id):
            found.append(StagedRelease(release_id, path.stat().st_mtime))
    return sorted(found, key=lambda item: (-item.recorded_at, item.release_id))


def current_release(root: StrPath, strict: bool = False) -> str | None:
    return _link_release(live_dir(root) / CURRENT, strict)


def previous_release(root: StrPath, strict: bool = False) -> str | None:
    return _link_release(live_dir(root) / PREVIOUS, strict)


def _link_release(link: Path, strict: bool) -> str | None:
    """The release id a `current`/`previous` link names, or None if it is missing. One that is no such link
    (the agent's user can put anything there) is None too, or, with strict, UnsafePath naming it."""
    try:
        target = os.readlink(link)  # never follows the link itself, and live/ sits in root's R
    except FileNotFoundError:
        return None
    except OSError as err:
        target = f"<not a symlink: {err.strerror}>"
    else:
        parent, _, name = target.rpartition("/")
        try:
            if parent == f"../{RELEASES}":
                return validate_release_id(name)
        except ProtocolError:
            pass
    if strict:
        raise UnsafePath(f"{link} is {target!r}, not a link to ../{RELEASES}/<id>: which release it protects "
                         "cannot be known, so nothing was removed (the agent rewrites it at its next switch)")
    log.warning("%s points to %r, not to ../%s/<id>; treating it as unset", link, target, RELEASES)
    return None


def release_names(root: StrPath) -> list[str]:
    """Every release id with a directory or a record under releases/, staged or not (a crash can leave halves)."""
    names = set()
    for path in releases_dir(root).iterdir() if releases_dir(root).is_dir() else ():
        name = path.name[: -len(RECORD_SUFFIX)] if path.name.endswith(RECORD_SUFFIX) else path.name
        if name.endswith(PARTIAL_SUFFIX) or name.startswith("."):
            continue
        try:
            names.add(validate_release_id(name))
        except ProtocolError:
            log.warning("leaving %s alone: not a release frontfleet made", path)
    return sorted(names)


