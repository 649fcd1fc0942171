"""The manifest of a build: every file's path, size and sha256, and the release id that follows from them.

A release id is derived from the content, so the same build always gets the same
id and is sent, staged and switched to only once. A manifest comes from a build
directory on the controller or from JSON sent to a host; both ways go through
the same path rules, because a host trusts no input: no symlinks, devices,
FIFOs or sockets in a build, no absolute paths, no `.` or `..` components, no
empty components. Dotfiles such as `.well-known/…` are fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ManifestError, ProtocolError
from .protocol import validate_release_id

CHUNK_SIZE = 1024 * 1024
MANIFEST_FORMAT = "frontfleet-manifest"
MANIFEST_VERSION = 1
RELEASE_ID_LENGTH = 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = frozenset(("path", "size", "sha256"))
_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
_PARALLEL_MIN_SIZE = 256 * 1024
_buffers = threading.local()


@dataclass(frozen=True, order=True)
class Entry:
    """One file of a release: where it lives under the release, how big it is, what it holds."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; build it with `build_manifest`, `Manifest.from_entries` or `Manifest.from_json`."""

    entries: tuple[Entry, ...]
    digest: str
    release_id: str

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> Manifest:
        """Check entries, sort them and derive the digest and release id from them."""
        ordered = tuple(sorted(entries))
        _check_entries(ordered)
        digest = content_digest(ordered)
        return cls(entries=ordered, digest=digest, release_id=release_id_for(digest))

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready object (the project's `to_json` convention, as in protocol.py)."""
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "release_id": self.release_id,
            "digest": self.digest,
            "entries": [entry.to_json() for entry in self.entries],
        }

    def dumps(self) -> str:
        """The manifest as compact JSON text, as it travels in a staging stream."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Validate an untrusted manifest, parsed or as JSON text: every entry, the digest, and the id from it."""
        body = _parse(data) if isinstance(data, str | bytes | bytearray) else data
        if not isinstance(body, dict):
            raise ManifestError("manifest is not a JSON object")
        if body.get("format") != MANIFEST_FORMAT or body.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest has format {body.get('format')!r} version {body.get('version')!r}; "
                f"expected {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}"
            )
        raw_entries = body.get("entries")
        if not isinstance(raw_entries, list):
            raise ManifestError("manifest has no list of entries")
        manifest = cls.from_entries(_entry_from_json(raw, index) for index, raw in enumerate(raw_entries))
        claimed_digest, claimed_id = body.get("digest"), body.get("release_id")
        if claimed_digest != manifest.digest:
            raise ManifestError(f"manifest digest {claimed_digest!r} does not match its entries ({manifest.digest})")
        if claimed_id != manifest.release_id:
            raise ManifestError(f"manifest release id {claimed_id!r} does not match its digest ({manifest.release_id})")
        return manifest


def _parse(text: str | bytes | bytearray) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest is not valid JSON: {err}") from err


def check_path(path: object) -> str:
    """A relative path inside a release, or ManifestError: no way out of the release directory."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"path {path!r} must be a non-empty string")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ManifestError(f"path {path!r} is not valid UTF-8; rename the file") from err
    if "\0" in path:
        raise ManifestError(f"path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise ManifestError(f"path {path!r} is absolute; manifest paths are relative to the build")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"path {path!r} has an empty, '.' or '..' component")
    return path


def content_digest(entries: Iterable[Entry]) -> str:
    """sha256 over a canonical encoding of the sorted entries: the identity of a build's content."""
    canonical = json.dumps(
        [MANIFEST_FORMAT, MANIFEST_VERSION, [[e.path, e.size, e.sha256] for e in entries]],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def release_id_for(digest: str) -> str:
    """The release id: the digest's first 16 hex digits, a safe directory name by construction."""
    try:
        return validate_release_id(digest[:RELEASE_ID_LENGTH])
    except ProtocolError as err:
        raise ManifestError(str(err)) from err


def build_manifest(build_dir: str | os.PathLike[str]) -> Manifest:
    """Walk a build directory and hash every file; refuses anything that is not a plain file or directory."""
    files = scan_build(build_dir)
    hashed = _hash_all(Path(build_dir), files)
    entries = []
    for (path, size), (sha256, hashed_size) in zip(files, hashed, strict=True):
        if hashed_size != size:
            raise ManifestError(f"{path} changed while it was being hashed ({size} → {hashed_size} bytes); build again")
        entries.append(Entry(path, size, sha256))
    return Manifest.from_entries(entries)


def scan_build(build_dir: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Every regular file under build_dir as (relative path, size), sorted; ManifestError on anything else."""
    root = os.fspath(build_dir)
    if not os.path.isdir(root):
        raise ManifestError(f"build directory {root} does not exist or is not a directory")
    found: list[tuple[str, int]] = []
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as listing:
            for item in listing:
                relative = prefix + item.name
                info = item.stat(follow_symlinks=False)
                mode = info.st_mode
                if stat.S_ISDIR(mode):
                    pending.append((relative + "/", item.path))
                elif stat.S_ISREG(mode):
                    found.append((check_path(relative), info.st_size))
                else:
                    raise ManifestError(f"{relative}: a {_kind(mode)} has no place in a build; replace it with a file")
    found.sort()
    return found


def _hash_all(root: Path, files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Hash large files on worker threads (hashlib drops the GIL) while this thread hashes the small ones.

    Threads only pay off on large files: for a typical 25 KB asset the hand-off costs more than it saves.
    """
    hashed: list[tuple[str, int]] = [("", 0)] * len(files)
    with ThreadPoolExecutor(max_workers=_HASH_WORKERS) as pool:
        large = {
            index: pool.submit(hash_file, root / path)
            for index, (path, size) in enumerate(files)
            if size >= _PARALLEL_MIN_SIZE
        }
        for index, (path, _) in enumerate(files):
            if index not in large:
                hashed[index] = hash_file(root / path)
        for index, future in large.items():
            hashed[index] = future.result()
    return hashed


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 1 MiB chunks into a per-thread buffer."""
    buffer = _chunk_buffer()
    view = memoryview(buffer)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


def _chunk_buffer() -> bytearray:
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(CHUNK_SIZE)
    return buffer


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _entry_from_json(raw: object, index: int) -> Entry:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise ManifestError(f"manifest entry {index} must be an object with exactly path, size and sha256")
    path = check_path(raw["path"])
    size = raw["size"]
    sha256 = raw["sha256"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{path}: size {size!r} must be a non-negative integer")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ManifestError(f"{path}: sha256 {sha256!r} must be 64 lowercase hex digits")
    return Entry(path, size, sha256)


def _check_entries(entries: tuple[Entry, ...]) -> None:
    """Sorted entries must name each path once, never a file as a directory, one size per content."""
    paths = set()
    sizes: dict[str, int] = {}
    for entry in entries:
        check_path(entry.path)
        if entry.path in paths:
            raise ManifestError(f"{entry.path} appears more than once in the manifest")
        paths.add(entry.path)
        if sizes.setdefault(entry.sha256, entry.size) != entry.size:
            raise ManifestError(f"{entry.path}: sha256 {entry.sha256} is listed with two different sizes")
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in paths:
                raise ManifestError(f"{path}: its parent {parent} is listed as a file")
            parent = parent.rpartition("/")[0]
