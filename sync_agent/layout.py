"""Where a release lives on a host's disk, for both sides: the paths, the verified records, what is staged, and
which release `current` and `previous` name. Nothing here writes a release; host/staging.py and host/releases.py do.

Layout under a release root R (`frontfleet_release_root`)::

    R/releases/<id>/               an immutable release directory, never changed once renamed into place
    R/releases/<id>.manifest.json  its verified record (the manifest plus "verified": true), outside the served tree
    R/releases/<id>.partial/       a release being staged; never a target, removed on failure and by prune
    R/current  -> releases/<id>    the release nginx serves (a relative symlink, replaced with rename(2))
    R/previous -> releases/<id>    the release current pointed to before the last switch
    R/pool/<path>                  hard links to the immutable files (assets/, _next/static/, static/) of every
                                   staged release, so the hashed assets of each kept release stay servable
    R/shared/                      the agent's (data.json, rendered templates); nothing here touches it

A release is *staged* when both its directory and its record exist: that is all
`switch` checks, so switching costs two stats and a rename, never a re-hash.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

from .errors import ManifestError, ProtocolError
from .fsutil import StrPath, atomic_write
from .manifest import Entry, Manifest
from .protocol import validate_release_id

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
CURRENT = "current"
PREVIOUS = "previous"


class StagedRelease(NamedTuple):
    release_id: str
    recorded_at: float  # mtime of the record, seconds since the epoch


# --- where things live --------------------------------------------------------------------------


def releases_dir(root: StrPath) -> Path:
    return Path(root) / "releases"


def release_dir(root: StrPath, release_id: str) -> Path:
    return releases_dir(root) / validate_release_id(release_id)


def record_path(root: StrPath, release_id: str) -> Path:
    """The verified record of a release: beside its directory, outside the served tree."""
    return releases_dir(root) / f"{validate_release_id(release_id)}{RECORD_SUFFIX}"


def partial_dir(root: StrPath, release_id: str) -> Path:
    return releases_dir(root) / f"{validate_release_id(release_id)}{PARTIAL_SUFFIX}"


def pool_dir(root: StrPath) -> Path:
    return Path(root) / "pool"


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


def current_release(root: StrPath) -> str | None:
    return _link_target(Path(root) / CURRENT)


def previous_release(root: StrPath) -> str | None:
    return _link_target(Path(root) / PREVIOUS)


def _link_target(link: Path) -> str | None:
    """The release id a `current`/`previous` link names, or None if it is missing or points elsewhere."""
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    parent, _, name = target.rpartition("/")
    try:
        if parent == "releases":
            return validate_release_id(name)
    except ProtocolError:
        pass
    log.warning("%s points to %r, not to releases/<id>; treating it as unset", link, target)
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


