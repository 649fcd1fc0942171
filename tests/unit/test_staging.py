"""Staging: a host receives only what it lacks, links the rest, and never shows a half-staged release."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import stat
from pathlib import Path

import pytest

from sync_agent.errors import ManifestError, NotEnoughSpace, TransferInterrupted
from sync_agent.host import staging
from sync_agent.host.staging import (
    MIB,
    SpaceNeeded,
    check_space,
    content_index,
    lacking,
    receive_stream,
    space_needed,
)
from sync_agent.manifest import Entry, Manifest, build_manifest, content_digest
from sync_agent.stream import OFFER_MAGIC, STREAM_END, STREAM_MAGIC, offer, open_offer, write_blobs, write_stream
from tests.builds import make_build

pytestmark = pytest.mark.unit

IMMUTABLE = ["assets/", "_next/static/", "static/"]


def fifty_files(changed: int = 0) -> dict[str, bytes]:
    """A build of 50 distinct files; `changed` of them get new content."""
    files = {"index.html": b"<html>v1</html>"}
    files.update({f"assets/chunk-{n:02d}.js": f"chunk {n} ".encode() * (n + 1) for n in range(49)})
    for n in range(changed):
        files[f"assets/chunk-{n:02d}.js"] = f"changed chunk {n}".encode()
    return files


def stream_for(root: Path, build: Path) -> tuple[Manifest, io.BytesIO]:
    """What the controller sends this host for build: the manifest and the contents the host lacks."""
    manifest = build_manifest(build)
    out = io.BytesIO()
    write_stream(out, manifest, build, [entry.sha256 for entry in lacking(root, manifest)])
    out.seek(0)
    return manifest, out


def stage(root: Path, build: Path) -> tuple[Manifest, int, int, int]:
    manifest, stream = stream_for(root, build)
    result = receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    return manifest, result.files_written, result.files_linked, result.bytes_received


def raw_stream(manifest_json: bytes, blobs: list[tuple[str, bytes]], trailer: bool = True) -> io.BytesIO:
    """A hand-made stream, for the inputs a correct controller never sends."""
    data = STREAM_MAGIC + f"{len(manifest_json)}\n".encode() + manifest_json
    for sha256, content in blobs:
        data += f"{sha256} {len(content)}\n".encode() + content
    return io.BytesIO(data + (STREAM_END if trailer else b""))


def assert_nothing_staged(root: Path, release_id: str) -> None:
    releases = root / "releases"
    assert not (releases / release_id).exists()
    assert not (releases / f"{release_id}.partial").exists()
    assert not (releases / f"{release_id}.manifest.json").exists()


def test_a_fresh_host_lacks_every_content_once(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", {"a.js": b"same", "b.js": b"same", "c.js": b"other"})
    manifest = build_manifest(build)
    missing = lacking(tmp_path / "root", manifest)
    assert sorted(entry.sha256 for entry in missing) == sorted({e.sha256 for e in manifest.entries})
    assert len(missing) == 2


def test_second_build_lacks_exactly_the_three_changed_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stage(root, make_build(tmp_path / "v1", fifty_files()))
    second = build_manifest(make_build(tmp_path / "v2", fifty_files(changed=3)))
    missing = lacking(root, second)
    assert sorted(entry.path for entry in missing) == ["assets/chunk-00.js", "assets/chunk-01.js", "assets/chunk-02.js"]


def test_content_index_maps_each_content_to_a_file_holding_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest, *_ = stage(root, make_build(tmp_path / "v1", fifty_files()))
    index = content_index(root)
    assert len(index) == 50
    for entry in manifest.entries:
        assert hashlib.sha256(Path(index[entry.sha256]).read_bytes()).hexdigest() == entry.sha256


def test_staging_a_delta_writes_three_files_and_hard_links_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, *_ = stage(root, make_build(tmp_path / "v1", fifty_files()))
    second, written, linked, received = stage(root, make_build(tmp_path / "v2", fifty_files(changed=3)))
    assert (written, linked) == (3, 47)
    assert received == sum(len(f"changed chunk {n}") for n in range(3))
    old, new = root / "releases" / first.release_id, root / "releases" / second.release_id
    for n in range(3, 49):
        assert (old / f"assets/chunk-{n:02d}.js").stat().st_ino == (new / f"assets/chunk-{n:02d}.js").stat().st_ino
    assert (new / "assets/chunk-00.js").read_bytes() == b"changed chunk 0"
    assert (old / "assets/chunk-00.js").stat().st_ino != (new / "assets/chunk-00.js").stat().st_ino


def test_staged_release_matches_the_build_and_has_a_verified_record(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = fifty_files()
    manifest, written, linked, _ = stage(root, make_build(tmp_path / "v1", files))
    assert (written, linked) == (50, 0)
    release = root / "releases" / manifest.release_id
    for relative, content in files.items():
        assert (release / relative).read_bytes() == content
        assert stat.S_IMODE((release / relative).stat().st_mode) == 0o644
    record = json.loads((root / "releases" / f"{manifest.release_id}.manifest.json").read_text())
    assert record["verified"] is True
    assert Manifest.from_json(json.dumps(record)) == manifest
    assert not (root / "releases" / f"{manifest.release_id}.partial").exists()


def test_one_content_at_several_paths_is_sent_once_and_hard_linked(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build = make_build(tmp_path / "dist", {"a/logo.svg": b"<svg/>", "b/logo.svg": b"<svg/>", "index.html": b"i"})
    manifest, written, linked, received = stage(root, build)
    release = root / "releases" / manifest.release_id
    assert (written, linked, received) == (3, 0, len(b"<svg/>") + 1)
    assert (release / "a/logo.svg").stat().st_ino == (release / "b/logo.svg").stat().st_ino


def test_staging_a_staged_release_again_is_a_no_op_that_consumes_the_stream(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build = make_build(tmp_path / "dist", fifty_files())
    stage(root, build)
    manifest = build_manifest(build)
    stream = io.BytesIO()
    write_stream(stream, manifest, build, [entry.sha256 for entry in manifest.entries])
    stream.seek(0)
    result = receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    assert result.already_staged and result.bytes_received == 0 and result.files_written == 0
    assert stream.read() == b""


def test_a_stale_partial_directory_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest, stream = stream_for(root, make_build(tmp_path / "dist", fifty_files()))
    stale = root / "releases" / f"{manifest.release_id}.partial"
    (stale / "junk").mkdir(parents=True)
    (stale / "junk" / "file").write_bytes(b"left by a crash")
    receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    assert not stale.exists()
    assert not (root / "releases" / manifest.release_id / "junk").exists()


@pytest.mark.parametrize("keep_fraction", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_interrupted_stream_leaves_no_release_and_no_partial(tmp_path: Path, keep_fraction: float) -> None:
    root = tmp_path / "root"
    manifest, stream = stream_for(root, make_build(tmp_path / "dist", fifty_files()))
    data = stream.getvalue()
    truncated = io.BytesIO(data[: int(len(data) * keep_fraction)])
    with pytest.raises(TransferInterrupted, match="the transfer was interrupted"):
        receive_stream(root, manifest.release_id, truncated, IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def test_stream_missing_only_its_trailer_is_refused_as_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest, stream = stream_for(root, make_build(tmp_path / "dist", fifty_files()))
    data = stream.getvalue()
    assert data.endswith(STREAM_END)
    with pytest.raises(TransferInterrupted, match="interrupted"):
        receive_stream(root, manifest.release_id, io.BytesIO(data[: -len(STREAM_END)]), IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def test_blob_whose_bytes_do_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = build_manifest(make_build(tmp_path / "dist", {"index.html": b"genuine"}))
    stream = raw_stream(manifest.dumps().encode(), [(manifest.entries[0].sha256, b"forgery")])
    with pytest.raises(ManifestError, match="sha256"):
        receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def test_blob_not_in_the_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = build_manifest(make_build(tmp_path / "dist", {"index.html": b"genuine"}))
    extra = b"smuggled"
    blobs = [(manifest.entries[0].sha256, b"genuine"), (hashlib.sha256(extra).hexdigest(), extra)]
    with pytest.raises(ManifestError, match="not in the manifest"):
        receive_stream(root, manifest.release_id, raw_stream(manifest.dumps().encode(), blobs), IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def test_blob_with_a_size_other_than_the_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = build_manifest(make_build(tmp_path / "dist", {"index.html": b"genuine"}))
    stream = raw_stream(manifest.dumps().encode(), [(manifest.entries[0].sha256, b"genuine!")])
    with pytest.raises(ManifestError, match="8 bytes"):
        receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def test_stream_for_another_release_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest, stream = stream_for(root, make_build(tmp_path / "dist", fifty_files()))
    with pytest.raises(ManifestError, match="not the release 0123456789abcdef"):
        receive_stream(root, "0123456789abcdef", stream, IMMUTABLE)
    assert_nothing_staged(root, "0123456789abcdef")
    assert_nothing_staged(root, manifest.release_id)


def test_stream_whose_manifest_has_a_traversal_path_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    content = b"pwned"
    entry = Entry("../../escape.txt", len(content), hashlib.sha256(content).hexdigest())
    digest = content_digest([entry])
    body = {"format": "frontfleet-manifest", "version": 1, "release_id": digest[:16], "digest": digest,
            "entries": [entry.to_json()]}
    stream = raw_stream(json.dumps(body).encode(), [(entry.sha256, content)])
    with pytest.raises(ManifestError, match=r"'\.\.'"):
        receive_stream(root, digest[:16], stream, IMMUTABLE)
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "escape.txt").exists()
    assert_nothing_staged(root, digest[:16])


def test_content_neither_sent_nor_on_the_host_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = build_manifest(make_build(tmp_path / "dist", {"a.js": b"a", "b.js": b"b"}))
    stream = raw_stream(manifest.dumps().encode(), [(manifest.entries[0].sha256, b"a")])
    with pytest.raises(ManifestError, match=r"b\.js.*neither in the stream nor on this host"):
        receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    assert_nothing_staged(root, manifest.release_id)


def offer_session(root: Path, build: Path) -> tuple[Manifest, list[dict[str, object]], int]:
    """Both sides of a negotiated stream in one process. The controller's part is written up front
    as it would go out after the host's answers (the host is known to lack what `lacking` says);
    (manifest, the host's answers in order, files linked)."""
    manifest = build_manifest(build)
    stream = io.BytesIO()
    open_offer(stream)
    if not (root / "releases" / manifest.release_id).is_dir():
        stream.write(offer(manifest))
        write_blobs(stream, manifest, build, [e.sha256 for e in lacking(root, manifest)])
    stream.seek(0)
    answers = io.BytesIO()
    result = receive_stream(root, manifest.release_id, stream, IMMUTABLE, answers=answers)
    assert stream.read() == b"", "the host read the whole stream"
    return manifest, [json.loads(line) for line in answers.getvalue().splitlines()], result.files_linked


def test_an_offer_is_answered_with_exactly_the_contents_the_host_lacks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _, answers, _ = offer_session(root, make_build(tmp_path / "v1", fifty_files()))
    assert answers[0] == {"staged": False} and len(answers[1]["missing"]) == 50  # type: ignore[arg-type]
    second, answers, linked = offer_session(root, make_build(tmp_path / "v2", fifty_files(changed=3)))
    by_sha = {e.sha256: e.path for e in second.entries}
    assert answers[0] == {"staged": False} and len(answers) == 2
    missing = sorted(by_sha[sha] for sha in answers[1]["missing"])  # type: ignore[attr-defined]
    assert missing == [f"assets/chunk-{n:02d}.js" for n in range(3)] and linked == 47
    assert (root / "releases" / second.release_id / "assets" / "chunk-00.js").read_bytes() == b"changed chunk 0"


def test_a_staged_release_is_answered_at_once_and_nothing_more_is_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build = make_build(tmp_path / "v1", fifty_files())
    offer_session(root, build)
    _, answers, _ = offer_session(root, build)
    assert answers == [{"staged": True}]


def test_the_offer_is_the_manifest_compressed(tmp_path: Path) -> None:
    manifest = build_manifest(make_build(tmp_path / "v1", fifty_files()))
    length, _, payload = offer(manifest).partition(b"\n")
    assert int(length) == len(payload) and lzma.decompress(payload) == manifest.dumps().encode()
    assert len(payload) < len(manifest.dumps().encode()) * 0.7


def test_a_negotiated_stream_without_an_answer_channel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="needs a channel for the answers"):
        receive_stream(tmp_path / "root", "0123456789abcdef", io.BytesIO(OFFER_MAGIC), IMMUTABLE)


def test_an_offer_that_is_not_xz_is_refused(tmp_path: Path) -> None:
    garbage = b"PK\x03\x04 a zip, not xz data"
    stream = io.BytesIO(OFFER_MAGIC + f"{len(garbage)}\n".encode() + garbage)
    with pytest.raises(ManifestError, match="not xz data"):
        receive_stream(tmp_path, "0123456789abcdef", stream, IMMUTABLE, answers=io.BytesIO())


def test_an_offer_inflating_beyond_the_manifest_limit_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "MAX_MANIFEST_BYTES", 1000)
    bomb = lzma.compress(b" " * 100_000)
    answers = io.BytesIO()
    with pytest.raises(ManifestError, match="inflates beyond 1000 bytes"):
        receive_stream(tmp_path, "0123456789abcdef", io.BytesIO(OFFER_MAGIC + f"{len(bomb)}\n".encode() + bomb),
                       IMMUTABLE, answers=answers)
    assert answers.getvalue() == b'{"staged": false}\n', "no list of missing contents for a refused offer"
    assert not (tmp_path / "releases" / "0123456789abcdef").exists()


def test_stream_with_wrong_magic_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="FRONTFLEET-STREAM"):
        receive_stream(tmp_path, "0123456789abcdef", io.BytesIO(b"PK\x03\x04 a zip file"), IMMUTABLE)


def test_immutable_files_are_hard_linked_into_the_pool(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = {"index.html": b"i", "assets/app-1.js": b"a", "_next/static/x.js": b"n", "static/s.css": b"s",
             "assetsbis/no.js": b"no"}
    manifest, *_ = stage(root, make_build(tmp_path / "dist", files))
    release = root / "releases" / manifest.release_id
    for relative in ("assets/app-1.js", "_next/static/x.js", "static/s.css"):
        assert (root / "pool" / relative).stat().st_ino == (release / relative).stat().st_ino
    assert not (root / "pool" / "index.html").exists()
    assert not (root / "pool" / "assetsbis").exists()


def test_pool_path_with_different_content_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stage(root, make_build(tmp_path / "v1", {"index.html": b"1", "assets/app.js": b"old"}))
    second, *_ = stage(root, make_build(tmp_path / "v2", {"index.html": b"2", "assets/app.js": b"new"}))
    assert (root / "pool" / "assets/app.js").read_bytes() == b"new"
    assert (root / "pool" / "assets/app.js").stat().st_ino == (
        root / "releases" / second.release_id / "assets/app.js"
    ).stat().st_ino


def test_progress_reports_content_bytes_sent_so_far(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", {"a": b"x" * 10, "b": b"y" * 5})
    manifest = build_manifest(build)
    seen: list[int] = []
    total = write_blobs(io.BytesIO(), manifest, build, [e.sha256 for e in manifest.entries], progress=seen.append)
    assert total == 15
    assert seen == sorted(seen) and seen[-1] == 15


def test_writing_a_stream_with_a_content_not_in_the_manifest_is_refused(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", {"a": b"x"})
    with pytest.raises(ManifestError, match="not in the manifest"):
        write_stream(io.BytesIO(), build_manifest(build), build, ["f" * 64])


# --- room on the host ---------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def test_a_filesystem_with_less_room_than_needed_is_refused_naming_the_directory_and_both_sizes(
        tmp_path: Path) -> None:
    releases = tmp_path / "root" / "releases"  # not there yet: the filesystem that would hold it is checked
    needed = free_bytes(tmp_path) + 1024 * MIB
    with pytest.raises(NotEnoughSpace) as refused:
        check_space(releases, SpaceNeeded(needed, 1))
    message = str(refused.value)
    assert message.startswith(f"not enough space in {releases}: needs {needed / MIB:.1f} MiB, ")
    free_mib = float(message.split(", ")[1].split(" MiB free")[0])
    assert abs(free_mib - free_bytes(tmp_path) / MIB) < 64, message  # what is free, give or take other writers
    assert not releases.exists(), "checking creates nothing"


def test_a_filesystem_with_room_passes_the_check(tmp_path: Path) -> None:
    check_space(tmp_path / "releases", SpaceNeeded(1, 1))


def test_the_room_needed_counts_only_the_contents_the_host_lacks_rounded_up_to_the_fragment(tmp_path: Path) -> None:
    build = make_build(tmp_path / "v1", {"index.html": b"x" * 5000, "assets/a.js": b"a" * 10, "assets/b.js": b"b"})
    manifest = build_manifest(build)
    everything = space_needed(manifest, manifest.entries, 4096)
    index_only = space_needed(manifest, [e for e in manifest.entries if e.path == "index.html"], 4096)
    nothing = space_needed(manifest, [], 4096)
    assert everything.bytes - nothing.bytes == 2 * 4096 + 4096 + 4096  # 5000 bytes take two fragments, 10 and 1 one
    assert index_only.bytes - nothing.bytes == 2 * 4096
    assert nothing.bytes >= staging.SPACE_MARGIN_BYTES + len(manifest.dumps())  # the margin and the record
    assert everything.inodes - nothing.inodes == 3


def test_a_host_without_room_answers_no_missing_list_and_stages_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller then sends no content: it reads the end of the answers and reports the host's error."""
    root = tmp_path / "root"
    monkeypatch.setattr(staging, "SPACE_MARGIN_BYTES", free_bytes(tmp_path) + 1024 * MIB)
    manifest = build_manifest(make_build(tmp_path / "v1", fifty_files()))
    stream = io.BytesIO()
    open_offer(stream)
    stream.write(offer(manifest))
    stream.seek(0)
    answers = io.BytesIO()
    with pytest.raises(NotEnoughSpace, match=f"not enough space in {root / 'releases'}: needs "):
        receive_stream(root, manifest.release_id, stream, IMMUTABLE, answers=answers)
    assert [json.loads(line) for line in answers.getvalue().splitlines()] == [{"staged": False}]
    assert_nothing_staged(root, manifest.release_id)


def test_a_one_way_stream_to_a_host_without_room_is_refused_before_its_contents_are_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    monkeypatch.setattr(staging, "SPACE_MARGIN_BYTES", free_bytes(tmp_path) + 1024 * MIB)
    manifest, stream = stream_for(root, make_build(tmp_path / "v1", fifty_files()))
    with pytest.raises(NotEnoughSpace):
        receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    manifest_bytes = len(manifest.dumps().encode())
    assert stream.tell() == len(STREAM_MAGIC) + len(f"{manifest_bytes}\n") + manifest_bytes, "no content was read"
    assert_nothing_staged(root, manifest.release_id)
