"""The staging stream's format, shared by its two ends: the controller (and a host exporting a release for a
host-to-host copy) writes it; host/staging.py reads it. docs/releases.md documents the format:

    negotiated                                    one-way
    FRONTFLEET-STREAM 2\\n                         FRONTFLEET-STREAM 1\\n
        host answers {"staged": …}\\n
    <length of the compressed manifest>\\n       <length of the manifest JSON>\\n
    <xz(manifest JSON)>                           <manifest JSON>
        host answers {"missing": [sha256, …]}\\n
    then for each content: <sha256> <size>\\n<size raw bytes>
    END\\n
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import ManifestError
from .fsutil import StrPath
from .manifest import CHUNK_SIZE, Entry, Manifest

STREAM_MAGIC = b"FRONTFLEET-STREAM 1\n"  # one-way: the manifest and the contents, for a host-to-host copy
OFFER_MAGIC = b"FRONTFLEET-STREAM 2\n"  # negotiated: the host answers; the manifest goes xz-compressed
STREAM_END = b"END\n"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def write_stream(out: BinaryIO, manifest: Manifest, build_dir: StrPath, blobs: Iterable[str]) -> int:
    """Write a one-way stream (a host-to-host copy): the manifest, each content in blobs once, the trailer.

    Returns the content bytes sent.
    """
    payload = manifest.dumps().encode("utf-8")
    out.write(STREAM_MAGIC + f"{len(payload)}\n".encode() + payload)
    return write_blobs(out, manifest, build_dir, blobs)


def open_offer(out: BinaryIO) -> None:
    """Open a negotiated stream; the host answers {"staged": …} before anything else is sent."""
    out.write(OFFER_MAGIC)
    out.flush()


def offer(manifest: Manifest) -> bytes:
    """The offer of a manifest, as it follows the host's first answer: its length, then the manifest JSON
    xz-compressed. 2,000 entries: 257 KB of JSON, 86 KB offered (zlib: 103 KB); compressing takes
    about 50 ms, so a rollout builds it once for all hosts. The host answers {"missing": [sha256, …]}."""
    payload = lzma.compress(manifest.dumps().encode("utf-8"), preset=6)
    return f"{len(payload)}\n".encode() + payload


def read_answer(answers: IO[bytes], key: str) -> Any:
    """The host's answer `key` in a negotiated stream; None if it failed first (its exit status and stderr say why)."""
    line = answers.readline()
    if not line.endswith(b"\n"):
        return None
    try:
        return json.loads(line)[key]
    except (ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"the host answered {line[:80]!r}, not {key}; is it the same version?") from err


def write_blobs(
    out: BinaryIO,
    manifest: Manifest,
    build_dir: StrPath,
    blobs: Iterable[str],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send each content in blobs once, then the trailer.

    progress, if given, is called after each chunk with the content bytes sent so far. Returns that total.
    """
    by_sha = {entry.sha256: entry for entry in reversed(manifest.entries)}
    sent = 0
    for sha256 in dict.fromkeys(blobs):
        entry = by_sha.get(sha256)
        if entry is None:
            raise ManifestError(f"content {sha256} is not in the manifest of release {manifest.release_id}")
        out.write(f"{sha256} {entry.size}\n".encode())
        sent = _send_file(out, Path(build_dir) / entry.path, entry, sent, progress)
    out.write(STREAM_END)
    out.flush()
    return sent


def _send_file(out: BinaryIO, path: Path, entry: Entry, sent: int, progress: Callable[[int], None] | None) -> int:
    remaining = entry.size
    with open(path, "rb") as source:
        while remaining:
            chunk = source.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ManifestError(f"{entry.path} is shorter than its manifest says; the build changed, build again")
            out.write(chunk)
            remaining -= len(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent)
    return sent

