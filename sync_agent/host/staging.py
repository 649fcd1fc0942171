"""Staging a release on this host: receive a stream (sync_agent/stream.py), send for only the content this host
lacks, hard-link the rest, verify, rename into place.

One SSH session per host (`sync-agent stage`, `receive_stream`) does it all. The
controller opens a negotiated stream; the host answers whether it has the release
already; if not, the controller offers the manifest (xz-compressed), the host
answers the contents it lacks (`lacking`), and the controller sends exactly those.
A host-to-host copy, where nothing can answer, sends the manifest and its contents
in one go.

Nothing appears under `releases/<id>` until every file is in place and
verified: the release is built in `releases/<id>.partial`, which any failure
removes. Before it asks for a single byte, the host checks that its releases
filesystem has room for what it lacks (`check_space`): a full disk fails the
rollout at staging, naming the host, before anything switches.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import lzma
import os
import shutil
import stat
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ManifestError, NotEnoughSpace, TransferInterrupted
from ..fsutil import StrPath, syncfs
from ..layout import (
    check_root_owned,
    partial_dir,
    pool_dir,
    record_path,
    recorded_releases,
    release_dir,
    releases_dir,
    write_record,
)
from ..manifest import CHUNK_SIZE, Entry, Manifest, check_path
from ..protocol import validate_release_id
from ..stream import MAX_MANIFEST_BYTES, OFFER_MAGIC, STREAM_END, STREAM_MAGIC

log = logging.getLogger(__name__)

_MAX_HEADER_LINE = 128
# Room kept free beyond what the files themselves take (each rounded up to the filesystem's fragment size): the
# record, directory growth, the pool's new directories, inodes where the filesystem takes them from data blocks
# (btrfs, tmpfs), and a margin so that staging never leaves the agent without a page for data.json.
SPACE_MARGIN_BYTES = 4 * 1024 * 1024
MIB = 1024 * 1024



@dataclass(frozen=True)
class StageResult:
    """What staging did on one host, for the controller's progress and summary."""

    release_id: str
    files_written: int
    files_linked: int
    bytes_received: int
    already_staged: bool


# --- what the host has --------------------------------------------------------------------------


def content_index(root: StrPath) -> dict[str, str]:
    """Every content (sha256) the host already has, and one file that holds it, from the verified records."""
    index: dict[str, str] = {}
    for release_id, entries in recorded_releases(root).items():
        base = os.fspath(release_dir(root, release_id))
        for entry in entries:
            if entry.sha256 not in index:
                index[entry.sha256] = f"{base}/{entry.path}"
    return index


def lacking(root: StrPath, manifest: Manifest, index: dict[str, str] | None = None) -> list[Entry]:
    """The entries whose content this host has nowhere, each content once: what the controller must send."""
    have = content_index(root) if index is None else index
    missing: dict[str, Entry] = {}  # each content once, however many paths hold it
    for entry in manifest.entries:
        if entry.sha256 not in have:
            missing.setdefault(entry.sha256, entry)
    return list(missing.values())


# --- room on the host ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceNeeded:
    """What staging a release writes on this host: bytes (each file rounded up to the fragment size, plus the
    record and SPACE_MARGIN_BYTES) and inodes (one per file written and per directory)."""

    bytes: int
    inodes: int


def space_needed(manifest: Manifest, missing: Iterable[Entry], fragment: int) -> SpaceNeeded:
    """The room that staging `missing` (what the host lacks) into a new release takes on a filesystem whose
    fragment (allocation unit) is `fragment` bytes. Linked files take an inode's directory entry only."""
    fragment, missing = max(1, fragment), list(missing)
    directories = {str(Path(entry.path).parent) for entry in manifest.entries}  # "." is the release itself
    data = sum(-(-entry.size // fragment) * fragment for entry in missing)
    record = len(manifest.dumps().encode("utf-8")) + 64  # the record is the manifest plus "verified": true
    blocks = data + record + len(directories) * fragment
    return SpaceNeeded(blocks + SPACE_MARGIN_BYTES, len(missing) + len(directories) + 1)


def existing_ancestor(path: StrPath) -> Path:
    """path itself if it exists, else its nearest existing parent (a first staging creates releases/)."""
    current = Path(path)
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_space(directory: StrPath, needed: SpaceNeeded) -> None:
    """Refuse (NotEnoughSpace) when the filesystem holding directory has less room than needed.

    Free space is f_bavail * f_frsize, what an unprivileged writer may still use (root's reserve is not
    counted on: the agent writes shared/ on the same filesystem as an ordinary user). Inodes are checked only
    where the filesystem has a fixed number of them (f_files > 0).
    """
    where = existing_ancestor(directory)
    info = os.statvfs(where)
    free = info.f_bavail * info.f_frsize
    if free < needed.bytes:
        raise NotEnoughSpace(directory, needed.bytes, free)
    if info.f_files > 0 and info.f_favail < needed.inodes:
        raise NotEnoughSpace(directory, needed.inodes, info.f_favail, what="inodes")


def check_room_for(root: StrPath, manifest: Manifest, missing: Iterable[Entry]) -> None:
    """check_space of the releases directory for staging `missing`, the entries this host lacks."""
    directory = releases_dir(root)
    fragment = os.statvfs(existing_ancestor(directory)).f_frsize
    check_space(directory, space_needed(manifest, missing, fragment))


# --- the stream, host side ----------------------------------------------------------------------


def receive_stream(root: StrPath, release_id: str, stream: BinaryIO, immutable_paths: Iterable[str],
                   answers: BinaryIO | None = None) -> StageResult:
    """Stage release_id from stream into releases/<id>, all or nothing; a no-op if it is staged already.

    A negotiated stream is answered on `answers`: first whether the release is staged, then, after
    the offered manifest, which contents this host lacks. A one-way stream carries the contents
    straight after its manifest.
    """
    validate_release_id(release_id)
    check_root_owned(root)  # run as root: never in a releases/ or pool/ the agent's user could swap for a symlink
    negotiated = _read_magic(stream)
    staged = release_dir(root, release_id).is_dir() and record_path(root, release_id).is_file()
    if negotiated:
        _answer(answers, {"staged": staged})
    if staged:
        _drain(stream)
        log.info("release %s is staged already; ignored the stream", release_id)
        return StageResult(release_id, 0, 0, 0, already_staged=True)
    manifest = _read_manifest(stream, release_id, compressed=negotiated)
    index = content_index(root)
    missing = lacking(root, manifest, index)
    check_room_for(root, manifest, missing)  # before the controller sends a byte: it sees the stream end instead
    if negotiated:
        _answer(answers, {"missing": [entry.sha256 for entry in missing]})
    if release_dir(root, release_id).exists():
        raise ManifestError(f"{release_dir(root, release_id)} exists without its record; remove it, then stage again")
    partial = partial_dir(root, release_id)
    _remove_tree(partial)
    try:
        result = _stage_into(partial, manifest, stream, index)
        write_record(root, manifest)
        syncfs(partial)
        os.rename(partial, release_dir(root, release_id))
    except BaseException:
        _remove_tree(partial)
        record_path(root, release_id).unlink(missing_ok=True)
        raise
    link_into_pool(root, manifest, immutable_paths)
    log.info("staged release %s: %d files written, %d linked, %d bytes received",
             release_id, result.files_written, result.files_linked, result.bytes_received)
    return result


def _answer(answers: BinaryIO | None, body: dict[str, Any]) -> None:
    if answers is None:
        raise ManifestError("a negotiated stream needs a channel for the answers")
    answers.write(json.dumps(body).encode() + b"\n")
    answers.flush()


def _stage_into(partial: Path, manifest: Manifest, stream: BinaryIO, index: dict[str, str]) -> StageResult:
    """Fill partial from the stream and the content index. Every entry ends up there with its size by
    construction: a written content is exactly its header's size, a linked one is checked before the link."""
    paths_of: dict[str, list[Entry]] = {}
    for entry in manifest.entries:
        paths_of.setdefault(entry.sha256, []).append(entry)
    _make_directories(partial, manifest)
    written, received = _receive_blobs(partial, paths_of, stream)
    linked = 0
    for entry in manifest.entries:
        if entry.sha256 not in written:
            _link_from_host(index.get(entry.sha256), f"{partial}/{entry.path}", entry)
            linked += 1
    files_written = sum(len(paths_of[sha]) for sha in written)
    return StageResult(manifest.release_id, files_written, linked, received, already_staged=False)


def _read_magic(stream: BinaryIO) -> bool:
    """Whether the stream is negotiated (FRONTFLEET-STREAM 2) rather than one-way (1)."""
    magic = stream.read(len(STREAM_MAGIC))
    if len(magic) < len(STREAM_MAGIC) and (STREAM_MAGIC.startswith(magic) or OFFER_MAGIC.startswith(magic)):
        raise TransferInterrupted("the stream ended before its first line; the transfer was interrupted")
    if magic not in (STREAM_MAGIC, OFFER_MAGIC):
        raise ManifestError("the stream does not start with FRONTFLEET-STREAM 1 or 2; is the controller the same "
                            "version?")
    return magic == OFFER_MAGIC


def _read_manifest(stream: BinaryIO, release_id: str, compressed: bool) -> Manifest:
    length_line = stream.readline(_MAX_HEADER_LINE)
    if not length_line.endswith(b"\n") and (length_line.isdigit() or not length_line):
        raise TransferInterrupted("the stream ended inside the manifest's length; the transfer was interrupted")
    if not length_line.endswith(b"\n") or not length_line[:-1].isdigit():
        raise ManifestError("the stream has no valid manifest length")
    length = int(length_line)
    if length > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the stream's manifest is {length} bytes; the limit is {MAX_MANIFEST_BYTES}")
    payload = _read_exactly(stream, length, "the manifest")
    manifest = Manifest.from_json(_inflate(payload) if compressed else payload)
    if manifest.release_id != release_id:
        raise ManifestError(f"the stream carries release {manifest.release_id}, not the release {release_id} asked for")
    return manifest


def _inflate(payload: bytes) -> bytes:
    """Decompress an offered manifest, refusing more than MAX_MANIFEST_BYTES (a compression bomb)."""
    inflater = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        text = inflater.decompress(payload, MAX_MANIFEST_BYTES)
    except lzma.LZMAError as err:
        raise ManifestError(f"the offered manifest is not xz data: {err}") from err
    if not inflater.eof:
        raise ManifestError(f"the offered manifest is truncated or inflates beyond {MAX_MANIFEST_BYTES} bytes")
    return text


def _receive_blobs(partial: Path, paths_of: dict[str, list[Entry]], stream: BinaryIO) -> tuple[set[str], int]:
    """Write each content to its first path, hashing as it lands; link its other paths. Stops at the trailer."""
    written: set[str] = set()
    received = 0
    while True:
        header = stream.readline(_MAX_HEADER_LINE)
        if header == STREAM_END:
            return written, received
        sha256, size = _parse_blob_header(header, paths_of, written)
        first, *others = paths_of[sha256]
        _write_blob(stream, partial / first.path, sha256, size)
        for entry in others:
            os.link(partial / first.path, partial / entry.path)
        written.add(sha256)
        received += size


def _parse_blob_header(header: bytes, paths_of: dict[str, list[Entry]], written: set[str]) -> tuple[str, int]:
    if not header:
        raise TransferInterrupted("the stream ended before its END trailer; the transfer was interrupted")
    if not header.endswith(b"\n") and len(header) < _MAX_HEADER_LINE:
        raise TransferInterrupted("the stream ended inside a content header; the transfer was interrupted")
    parts = header.rstrip(b"\n").split(b" ")
    if not header.endswith(b"\n") or len(parts) != 2 or not parts[1].isdigit():
        raise ManifestError(f"the stream has a malformed content header {header[:80]!r}")
    sha256, size = parts[0].decode("ascii", "replace"), int(parts[1])
    entries = paths_of.get(sha256)
    if entries is None:
        raise ManifestError(f"the stream sends content {sha256} that is not in the manifest")
    if sha256 in written:
        raise ManifestError(f"the stream sends content {sha256} twice")
    if size != entries[0].size:
        raise ManifestError(f"{entries[0].path}: the stream sends {size} bytes, the manifest says {entries[0].size}")
    return sha256, size


def _write_blob(stream: BinaryIO, target: Path, sha256: str, size: int) -> None:
    digest = hashlib.sha256()
    remaining = size
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o644)  # nginx reads it whatever the agent's umask
        while remaining:
            chunk = stream.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise TransferInterrupted(f"the stream ended inside content {sha256}; the transfer was interrupted")
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    if digest.hexdigest() != sha256:
        raise ManifestError(f"content received for {target.name} has sha256 {digest.hexdigest()}, not {sha256}")


def _link_from_host(source: str | None, target: str, entry: Entry) -> None:
    """Hard-link a content the host has already; its size is checked against the trusted record, never re-hashed."""
    if source is None:
        raise ManifestError(f"{entry.path}: content {entry.sha256} is neither in the stream nor on this host")
    try:
        if os.stat(source).st_size != entry.size:
            raise ManifestError(f"{source} no longer has the size its record says; prune it and stage again")
        os.link(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise ManifestError(f"{entry.path}: cannot link {source}: {err.strerror}") from err
        shutil.copyfile(source, target)  # a release root across filesystems: copying is slower but correct


def _make_directories(partial: Path, manifest: Manifest) -> None:
    partial.mkdir(mode=0o755, parents=True)
    os.chmod(partial, 0o755)
    for directory in sorted({str(Path(entry.path).parent) for entry in manifest.entries} - {"."}):
        (partial / directory).mkdir(mode=0o755, parents=True, exist_ok=True)


def _read_exactly(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TransferInterrupted(f"the stream ended inside {what}; the transfer was interrupted")
    return data


def _drain(stream: BinaryIO) -> None:
    while stream.read(CHUNK_SIZE):
        pass


def _remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)


# --- the asset pool -----------------------------------------------------------------------------


def immutable_entries(manifest: Manifest, immutable_paths: Iterable[str]) -> list[Entry]:
    """The entries under the immutable paths (`assets/`, `_next/static/`, …): the hashed, cacheable files."""
    prefixes = tuple(check_path(prefix.strip("/")) + "/" for prefix in immutable_paths)
    return [entry for entry in manifest.entries if entry.path.startswith(prefixes)]


def link_into_pool(root: StrPath, manifest: Manifest, immutable_paths: Iterable[str]) -> int:
    """Hard-link a staged release's immutable files into pool/, so nginx serves every kept release's assets."""
    source = release_dir(root, manifest.release_id)
    pool = pool_dir(root)
    linked = 0
    for entry in immutable_entries(manifest, immutable_paths):
        try:
            linked += _link_one_into_pool(f"{source}/{entry.path}", f"{pool}/{entry.path}")
        except OSError as err:  # a pool conflict must not undo a good staging
            log.warning("could not add %s to the asset pool: %s", entry.path, err)
    return linked


def _link_one_into_pool(source: str, target: str) -> int:
    """Link source at target. One link(2) for a new path (a first rollout), three syscalls for a path
    that already holds this file (most paths of the next one)."""
    try:
        os.link(source, target)
        return 1
    except FileNotFoundError:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        os.link(source, target)
        return 1
    except FileExistsError:
        held = os.lstat(target)
        if stat.S_ISREG(held.st_mode) and os.path.samestat(held, os.stat(source)):
            return 0
    directory, name = os.path.split(target)
    temp = f"{directory}/.{name}.{os.getpid()}.pool-tmp"
    with suppress(FileNotFoundError):
        os.unlink(temp)
    os.link(source, temp)
    try:
        os.replace(temp, target)  # a different content at the same path: replace it whole
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return 1
