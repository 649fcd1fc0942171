"""Releases on disk: verify, switch atomically under a reader, and prune what nothing needs."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from sync_agent.errors import ManifestError, ReleaseNotStaged
from sync_agent.host.releases import PreparedSwitch, prune, record_verified, switch, verify
from sync_agent.host.staging import lacking, receive_stream
from sync_agent.layout import current_release, is_staged, previous_release, staged_releases
from sync_agent.manifest import Manifest, build_manifest
from sync_agent.stream import write_stream
from tests.builds import make_build

pytestmark = pytest.mark.unit

IMMUTABLE = ["assets/"]


def stage_version(root: Path, tmp_path: Path, version: str, extra: dict[str, bytes] | None = None) -> str:
    """Stage a small build whose index and one asset are unique to version; returns the release id."""
    files = {"index.html": f"<html>{version}</html>".encode(), f"assets/app-{version}.js": version.encode(),
             "assets/shared.js": b"shared", **(extra or {})}
    build = make_build(tmp_path / "builds" / version, files)
    manifest = build_manifest(build)
    stream = io.BytesIO()
    write_stream(stream, manifest, build, [entry.sha256 for entry in lacking(root, manifest)])
    stream.seek(0)
    receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    return manifest.release_id


def age_record(root: Path, release_id: str, seconds_ago: float) -> None:
    record = root / "releases" / f"{release_id}.manifest.json"
    when = time.time() - seconds_ago
    os.utime(record, (when, when))


# --- verify -----------------------------------------------------------------------------------------------------


def test_verify_accepts_a_directory_matching_its_manifest(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", {"index.html": b"x", "assets/a.js": b"a"})
    verify(build, build_manifest(build))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "assets/a.js").unlink(), r"assets/a\.js is missing"),
        (lambda d: (d / "extra.txt").write_bytes(b"e"), r"extra\.txt .*not in the manifest"),
        (lambda d: (d / "index.html").write_bytes(b"longer"), r"index\.html has 6 bytes"),
        (lambda d: (d / "index.html").write_bytes(b"y"), r"index\.html has sha256"),
        (lambda d: (d / "link").symlink_to("index.html"), "link.*symlink"),
    ],
)
def test_verify_names_the_first_mismatch(tmp_path: Path, change: object, message: str) -> None:
    build = make_build(tmp_path / "dist", {"index.html": b"x", "assets/a.js": b"a"})
    manifest = build_manifest(build)
    change(build)  # type: ignore[operator]
    with pytest.raises(ManifestError, match=message):
        verify(build, manifest)


def test_record_verified_makes_a_release_directory_staged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build = make_build(tmp_path / "dist", {"index.html": b"x"})
    manifest = build_manifest(build)
    target = root / "releases" / manifest.release_id
    target.parent.mkdir(parents=True)
    os.rename(build, target)
    assert not is_staged(root, manifest.release_id)
    verify(target, manifest)
    path = record_verified(root, manifest)
    assert is_staged(root, manifest.release_id)
    assert Manifest.from_json(path.read_bytes()) == manifest


# --- switch -----------------------------------------------------------------------------------------------------


def test_switch_moves_current_and_keeps_previous(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    second = stage_version(root, tmp_path, "v2")
    one = switch(root, first)
    assert (one.switched, one.previous) == (True, None)
    two = switch(root, second)
    assert (two.switched, two.previous) == (True, first)
    assert two.switched_at_ns is not None and two.switched_at_ns > 0
    assert os.lstat(root / "live" / "current").st_mtime_ns == two.switched_at_ns, "a restarted agent reads it back"
    assert (current_release(root), previous_release(root)) == (second, first)
    assert os.readlink(root / "live" / "current") == f"../releases/{second}"
    assert (root / "live" / "current" / "index.html").read_bytes() == b"<html>v2</html>"


def test_switching_to_the_current_release_is_a_no_op(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    second = stage_version(root, tmp_path, "v2")
    switch(root, first)
    switch(root, second)
    again = switch(root, second)
    assert (again.switched, again.previous, again.switched_at_ns) == (False, first, None)
    assert previous_release(root) == first


def test_a_prepared_switch_changes_nothing_served_until_commit_and_abort_leaves_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    second = stage_version(root, tmp_path, "v2")
    switch(root, first)
    before = sorted(os.listdir(root / "live"))
    abandoned = PreparedSwitch(root, second)
    assert (current_release(root), previous_release(root)) == (first, None)
    abandoned.abort()
    assert sorted(os.listdir(root / "live")) == before
    prepared = PreparedSwitch(root, second)
    assert current_release(root) == first
    result = prepared.commit()
    prepared.abort()  # after a commit: nothing left to drop, nothing undone
    assert (result.switched, result.previous) == (True, first)
    assert (current_release(root), previous_release(root)) == (second, first)
    assert sorted(os.listdir(root / "live")) == sorted([*before, "previous"])


def test_switching_to_an_unstaged_release_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    switch(root, first)
    with pytest.raises(ReleaseNotStaged, match="0123456789abcdef"):
        switch(root, "0123456789abcdef")
    assert current_release(root) == first


def test_switching_to_a_partial_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    partial = root / "releases" / "0123456789abcdef.partial"
    partial.mkdir(parents=True)
    (partial / "index.html").write_bytes(b"half")
    for name in ("0123456789abcdef.partial", "0123456789abcdef"):
        with pytest.raises(ReleaseNotStaged):
            switch(root, name)
    assert not (root / "live" / "current").exists()


def test_switching_to_a_directory_without_its_record_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    (root / "releases" / f"{first}.manifest.json").unlink()
    with pytest.raises(ReleaseNotStaged):
        switch(root, first)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", ".hidden", ""])
def test_switching_to_an_unsafe_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ReleaseNotStaged):
        switch(tmp_path, bad)


def test_a_reader_never_sees_a_missing_or_partial_file_during_200_switches(tmp_path: Path) -> None:
    root = tmp_path / "root"
    big_a, big_b = b"A" * 200_000, b"B" * 300_000
    first = stage_version(root, tmp_path, "v1", {"index.html": big_a})
    second = stage_version(root, tmp_path, "v2", {"index.html": big_b})
    switch(root, first)
    stop = threading.Event()
    reads: list[int] = [0]
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                content = (root / "live" / "current" / "index.html").read_bytes()
            except OSError as err:
                bad.append(f"read failed: {err}")
                continue
            if content not in (big_a, big_b):
                bad.append(f"partial content of {len(content)} bytes")
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(200):
            switch(root, second if n % 2 == 0 else first)
            time.sleep(0.0005)
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert reads[0] > 0
    assert current_release(root) == first


# --- listing and prune --------------------------------------------------------------------------------------------


def test_staged_releases_lists_newest_record_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = [stage_version(root, tmp_path, f"v{n}") for n in range(3)]
    for age, release_id in enumerate(ids):
        age_record(root, release_id, 100 - age * 10)
    assert [item.release_id for item in staged_releases(root)] == list(reversed(ids))
    (root / "releases" / "0123456789abcdef.partial").mkdir()
    assert len(staged_releases(root)) == 3


def test_prune_keeps_newest_current_previous_and_protected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = [stage_version(root, tmp_path, f"v{n}") for n in range(6)]
    for n, release_id in enumerate(ids):
        age_record(root, release_id, 600 - n * 60)  # ids[5] newest
    switch(root, ids[0])
    switch(root, ids[1])  # current ids[1], previous ids[0]
    left = root / "releases" / "fedcba9876543210.partial"  # a staging that died ten minutes ago
    (left / "assets").mkdir(parents=True)
    for path in (left / "assets", left):
        os.utime(path, (time.time() - 600, time.time() - 600))
    running = root / "releases" / "0123456789abcdef.partial"  # a staging writing now (the lock's next holder's)
    (running / "assets").mkdir(parents=True)
    os.utime(running, (time.time() - 600, time.time() - 600))  # its top folder is old, a folder inside it is not
    result = prune(root, keep=1, protect={ids[2]}, partial_grace=60)
    assert sorted(result.kept) == sorted([ids[5], ids[1], ids[0], ids[2]])
    assert sorted(result.removed) == sorted([ids[3], ids[4]])
    assert result.partials_removed == ["fedcba9876543210.partial"]
    assert (running / "assets").is_dir(), "a staging that changed within the grace period was removed"
    for release_id in result.kept:
        assert is_staged(root, release_id)
    for release_id in result.removed:
        assert not (root / "releases" / release_id).exists()
        assert not (root / "releases" / f"{release_id}.manifest.json").exists()
    assert not (root / "releases" / "fedcba9876543210.partial").exists()


def test_prune_never_removes_the_current_release(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = stage_version(root, tmp_path, "v1")
    switch(root, first)
    result = prune(root, keep=0, protect=set())
    assert result.kept == [first] and result.removed == []
    assert (root / "live" / "current" / "index.html").read_bytes() == b"<html>v1</html>"


def test_prune_keeps_pool_files_of_kept_releases_and_removes_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = [stage_version(root, tmp_path, f"v{n}") for n in range(3)]
    for n, release_id in enumerate(ids):
        age_record(root, release_id, 300 - n * 60)
    switch(root, ids[2])
    (root / "pool" / "assets" / "stray").mkdir()
    (root / "pool" / "assets" / "stray" / "unknown.js").write_bytes(b"?")
    result = prune(root, keep=1, protect=set())
    assert result.removed == sorted([ids[0], ids[1]])
    pool = root / "pool" / "assets"
    assert sorted(p.name for p in pool.iterdir()) == ["app-v2.js", "shared.js"]
    assert (pool / "shared.js").read_bytes() == b"shared"
    assert result.pool_files_removed == 3


def test_prune_keeps_a_pool_file_with_kept_content_even_from_another_inode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    kept = stage_version(root, tmp_path, "v1")
    switch(root, kept)
    pool_file = root / "pool" / "assets" / "shared.js"
    pool_file.unlink()
    pool_file.write_bytes(b"shared")  # same content, not a link to the release's file
    other = root / "pool" / "assets" / "app-v1.js"
    other.unlink()
    other.write_bytes(b"v9")  # same size as the record, other content
    prune(root, keep=0, protect=set())
    assert pool_file.exists()
    assert not other.exists()


def test_prune_removes_halves_left_by_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    kept = stage_version(root, tmp_path, "v1")
    switch(root, kept)
    (root / "releases" / "0123456789abcdef").mkdir()  # a directory whose record never got written
    (root / "releases" / "fedcba9876543210.manifest.json").write_text("{}")  # a record without its directory
    result = prune(root, keep=5, protect=set())
    assert result.removed == ["0123456789abcdef", "fedcba9876543210"]
    assert sorted(p.name for p in (root / "releases").iterdir()) == [kept, f"{kept}.manifest.json"]
