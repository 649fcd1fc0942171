"""The manifest: deterministic ids, and every unsafe build or manifest refused with the path named."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from sync_agent.errors import ManifestError
from sync_agent.fsutil import atomic_write, replace_symlink, syncfs
from sync_agent.manifest import CHUNK_SIZE, Entry, Manifest, build_manifest, content_digest
from sync_agent.protocol import validate_release_id
from tests.builds import make_build

pytestmark = pytest.mark.unit


SAMPLE = {
    "index.html": b"<html>hello</html>",
    "assets/app-1234.js": b"console.log(1)",
    "assets/app-1234.css": b"body{}",
    ".well-known/security.txt": b"Contact: ops@example.com",
    "empty.txt": b"",
    "big.bin": bytes(range(256)) * (CHUNK_SIZE // 256 * 3 + 7),
}


def manifest_body(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A manifest body whose digest and id match its entries, so only the entries can be at fault."""
    digest = content_digest(sorted(Entry(e["path"], e["size"], e["sha256"]) for e in entries))
    return {"format": "frontfleet-manifest", "version": 1, "release_id": digest[:16], "digest": digest,
            "entries": entries}


def test_same_build_gives_same_manifest_and_release_id(tmp_path: Path) -> None:
    first = build_manifest(make_build(tmp_path / "a", SAMPLE))
    second = build_manifest(make_build(tmp_path / "b", dict(reversed(SAMPLE.items()))))
    assert first == second
    assert first.to_json() == second.to_json()
    assert validate_release_id(first.release_id) == first.release_id
    assert len(first.release_id) == 16


def test_manifest_lists_every_file_sorted_with_size_and_sha256(tmp_path: Path) -> None:
    manifest = build_manifest(make_build(tmp_path, SAMPLE))
    assert [entry.path for entry in manifest.entries] == sorted(SAMPLE)
    for entry in manifest.entries:
        assert entry.size == len(SAMPLE[entry.path])
        assert entry.sha256 == hashlib.sha256(SAMPLE[entry.path]).hexdigest()


def test_one_changed_byte_changes_the_release_id(tmp_path: Path) -> None:
    before = build_manifest(make_build(tmp_path / "a", SAMPLE))
    after = build_manifest(make_build(tmp_path / "b", {**SAMPLE, "index.html": b"<html>hellO</html>"}))
    assert before.release_id != after.release_id


def test_renaming_a_file_changes_the_release_id(tmp_path: Path) -> None:
    before = build_manifest(make_build(tmp_path / "a", {"a.js": b"x"}))
    after = build_manifest(make_build(tmp_path / "b", {"b.js": b"x"}))
    assert before.release_id != after.release_id


def test_manifest_json_round_trips(tmp_path: Path) -> None:
    manifest = build_manifest(make_build(tmp_path, SAMPLE))
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(manifest.dumps()) == manifest
    assert Manifest.from_json(manifest.dumps().encode()) == manifest
    assert json.loads(manifest.dumps()) == manifest.to_json()


def test_build_with_symlink_is_refused_naming_the_path(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", SAMPLE)
    (build / "assets" / "link.js").symlink_to("app-1234.js")
    with pytest.raises(ManifestError, match=r"assets/link\.js.*symlink"):
        build_manifest(build)


def test_build_with_symlinked_directory_is_refused(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", SAMPLE)
    (build / "outside").symlink_to(tmp_path)
    with pytest.raises(ManifestError, match=r"outside.*symlink"):
        build_manifest(build)


def test_build_with_fifo_is_refused(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", SAMPLE)
    os.mkfifo(build / "pipe")
    with pytest.raises(ManifestError, match=r"pipe.*FIFO"):
        build_manifest(build)


def test_build_with_character_device_is_refused(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", SAMPLE)
    try:
        os.mknod(build / "assets" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.fail("creating a character device needs root (or CAP_MKNOD); run the unit tests as root")
    with pytest.raises(ManifestError, match=r"assets/null.*character device"):
        build_manifest(build)


def test_build_with_socket_is_refused(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", SAMPLE)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(build / "sock"))
        with pytest.raises(ManifestError, match=r"sock.*socket"):
            build_manifest(build)


def test_missing_build_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest(tmp_path / "nope")


def test_empty_directories_are_not_part_of_a_release(tmp_path: Path) -> None:
    build = make_build(tmp_path / "dist", {"index.html": b"x"})
    (build / "empty" / "deeper").mkdir(parents=True)
    assert [entry.path for entry in build_manifest(build).entries] == ["index.html"]


def test_dotfiles_are_legitimate_build_files(tmp_path: Path) -> None:
    manifest = build_manifest(make_build(tmp_path, {".well-known/x": b"1", ".htaccess": b"2", "...": b"3"}))
    assert {entry.path for entry in manifest.entries} == {".well-known/x", ".htaccess", "..."}


SHA = "a" * 64


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../escape", "'..'"),
        ("assets/../../escape", "'..'"),
        ("./index.html", "'.'"),
        ("assets/./x.js", "'.'"),
        ("assets//x.js", "empty"),
        ("assets/", "empty"),
        ("", "non-empty"),
        ("a\0b", "NUL"),
    ],
)
def test_manifest_json_with_unsafe_path_is_refused(path: str, why: str) -> None:
    body = manifest_body([{"path": path, "size": 1, "sha256": SHA}])
    with pytest.raises(ManifestError, match=re.escape(why)):
        Manifest.from_json(json.dumps(body))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"path": "a", "size": -1, "sha256": SHA}, "non-negative"),
        ({"path": "a", "size": "1", "sha256": SHA}, "non-negative"),
        ({"path": "a", "size": True, "sha256": SHA}, "non-negative"),
        ({"path": "a", "size": 1.5, "sha256": SHA}, "non-negative"),
        ({"path": "a", "size": 1, "sha256": "A" * 64}, "64 lowercase hex"),
        ({"path": "a", "size": 1, "sha256": "a" * 63}, "64 lowercase hex"),
        ({"path": "a", "size": 1, "sha256": None}, "64 lowercase hex"),
        ({"path": 7, "size": 1, "sha256": SHA}, "non-empty string"),
        ({"path": "a", "size": 1}, "exactly path, size and sha256"),
        ({"path": "a", "size": 1, "sha256": SHA, "mode": 0o4755}, "exactly path, size and sha256"),
        ("a", "exactly path, size and sha256"),
    ],
)
def test_manifest_json_with_malformed_entry_is_refused(entry: Any, why: str) -> None:
    body = {"format": "frontfleet-manifest", "version": 1, "release_id": "x", "digest": "x", "entries": [entry]}
    with pytest.raises(ManifestError, match=why):
        Manifest.from_json(json.dumps(body))


def test_manifest_json_with_duplicate_path_is_refused() -> None:
    entries = [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a", "size": 1, "sha256": SHA}]
    with pytest.raises(ManifestError, match="more than once"):
        Manifest.from_json(json.dumps(manifest_body(entries)))
    with pytest.raises(ManifestError, match="more than once"):
        Manifest.from_json(manifest_body(entries))


def test_manifest_json_with_file_used_as_directory_is_refused() -> None:
    entries = [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a/b", "size": 1, "sha256": SHA}]
    with pytest.raises(ManifestError, match="parent a is listed as a file"):
        Manifest.from_json(json.dumps(manifest_body(entries)))


def test_manifest_json_with_one_content_at_two_sizes_is_refused() -> None:
    entries = [{"path": "a", "size": 1, "sha256": SHA}, {"path": "b", "size": 2, "sha256": SHA}]
    with pytest.raises(ManifestError, match="two different sizes"):
        Manifest.from_json(json.dumps(manifest_body(entries)))


def test_manifest_json_whose_digest_does_not_match_entries_is_refused(tmp_path: Path) -> None:
    body = build_manifest(make_build(tmp_path, SAMPLE)).to_json()
    body["entries"][0]["size"] += 1
    with pytest.raises(ManifestError, match="digest"):
        Manifest.from_json(json.dumps(body))


def test_manifest_json_whose_id_does_not_match_digest_is_refused(tmp_path: Path) -> None:
    body = build_manifest(make_build(tmp_path, SAMPLE)).to_json()
    body["release_id"] = "evil"
    with pytest.raises(ManifestError, match="release id 'evil'"):
        Manifest.from_json(json.dumps(body))


@pytest.mark.parametrize("text", ["not json", "[]", '{"format": "other", "version": 1}', '{"format": '
                                  '"frontfleet-manifest", "version": 1, "entries": {}}'])
def test_manifest_json_that_is_not_a_manifest_is_refused(text: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(text)


def test_atomic_write_replaces_content_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two", mode=0o640)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_replace_symlink_swaps_target_and_leaves_no_temp(tmp_path: Path) -> None:
    replace_symlink(tmp_path / "current", "releases/a")
    replace_symlink(tmp_path / "current", "releases/b")
    assert os.readlink(tmp_path / "current") == "releases/b"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]
    syncfs(tmp_path)
