"""`sync-agent` host-side commands as the controller drives them over SSH: real processes, real files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sync_agent.errors import EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.builds import make_build

pytestmark = pytest.mark.integration

SYNC_AGENT = str(Path(sys.executable).with_name("sync-agent"))


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SYNC_AGENT, *args], input=stdin, capture_output=True, timeout=60)


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    first = {"index.html": b"<h1>A</h1>", "assets/app-1.js": b"console.log(1)", "assets/app.css": b"body{}"}
    second = {**first, "index.html": b"<h1>B</h1>", "assets/app-2.js": b"console.log(2)"}
    return make_build(tmp_path / "a", first), make_build(tmp_path / "b", second)


def stage(root: Path, build: Path) -> dict:
    """One `sync-agent stage` session, the way the controller holds it over SSH: offer the manifest,
    read the host's answer, send exactly what it lacks, read the result."""
    from sync_agent.manifest import Manifest, build_manifest
    from sync_agent.stream import offer, open_offer, read_answer, write_blobs

    manifest = Manifest.from_json(run("manifest", str(build), "--compact").stdout)
    assert manifest == build_manifest(build)
    command = [SYNC_AGENT, "stage", "--root", str(root), "--id", manifest.release_id, "--json"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        open_offer(proc.stdin)
        staged, missing = read_answer(proc.stdout, "staged"), []
        if staged is False:
            proc.stdin.write(offer(manifest))
            proc.stdin.flush()
            missing = read_answer(proc.stdout, "missing")
            write_blobs(proc.stdin, manifest, build, missing)
        assert staged is not None and missing is not None, proc.stderr.read()
        proc.stdin.close()
        result, errors = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, errors
    paths = {e.sha256: e.path for e in manifest.entries}
    return {"answer": {"staged": staged, "missing": sorted(paths[sha] for sha in missing)}, **json.loads(result)}


def test_stage_answers_only_what_the_host_lacks_and_links_the_rest(tmp_path, builds):
    root = tmp_path / "root"
    root.mkdir()
    first = stage(root, builds[0])
    assert len(first["answer"]["missing"]) == 3 and first["files_written"] == 3
    second = stage(root, builds[1])
    assert second["answer"]["missing"] == ["assets/app-2.js", "index.html"]
    assert (second["files_written"], second["files_linked"]) == (2, 2)
    again = stage(root, builds[1])
    assert again["answer"]["staged"] is True and again["already_staged"] is True
    status = json.loads(run("status", "--root", str(root), "--json").stdout)
    assert sorted(status["staged"]) == sorted([first["release"], second["release"]])


def test_have_tells_a_dry_run_what_stage_would_answer(tmp_path, builds):
    root = tmp_path / "root"
    root.mkdir()
    stage(root, builds[0])
    manifest = run("manifest", str(builds[1]), "--compact").stdout
    have = json.loads(run("have", "--root", str(root), stdin=manifest).stdout)
    assert not have["staged"] and sorted(e["path"] for e in have["missing"]) == ["assets/app-2.js", "index.html"]
    assert stage(root, builds[1])["answer"]["missing"] == sorted(e["path"] for e in have["missing"])


def test_export_streams_a_staged_release_to_another_host(tmp_path, builds):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    staged = stage(source, builds[0])
    record = (source / "releases" / f"{staged['release']}.manifest.json").read_bytes()
    have = json.loads(run("have", "--root", str(target), stdin=record).stdout)
    shas = json.dumps([e["sha256"] for e in have["missing"]]).encode()
    stream = run("export", "--root", str(source), "--id", staged["release"], stdin=shas)
    assert stream.returncode == 0, stream.stderr
    result = run("stage", "--root", str(target), "--id", staged["release"], stdin=stream.stdout)
    assert result.returncode == 0, result.stderr
    assert (target / "releases" / staged["release"] / "index.html").read_text() == "<h1>A</h1>"


def test_an_interrupted_stream_exits_3_not_as_bad_input_and_leaves_no_release(tmp_path, builds):
    from sync_agent.manifest import build_manifest
    from sync_agent.stream import write_stream
    root = tmp_path / "root"
    root.mkdir()
    manifest = build_manifest(builds[0])
    stream = io.BytesIO()
    write_stream(stream, manifest, builds[0], [e.sha256 for e in manifest.entries])
    cut = stream.getvalue()[:-10]
    result = run("stage", "--root", str(root), "--id", manifest.release_id, "--json", stdin=cut)
    assert result.returncode == EXIT_UNAVAILABLE and b"Traceback" not in result.stderr
    assert b"the transfer was interrupted" in result.stderr
    assert b"error" not in result.stdout, "stage's stdout is the controller's answer channel: errors go to stderr"
    assert list((root / "releases").iterdir()) == []


def test_a_manifest_with_a_traversal_path_is_refused(tmp_path):
    evil = json.dumps({"entries": [{"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}]}).encode()
    result = run("have", "--root", str(tmp_path), stdin=evil)
    assert result.returncode == EXIT_USAGE and b"Traceback" not in result.stderr


def test_verify_records_a_release_that_matches_and_names_the_first_mismatch(tmp_path, builds):
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_bytes(run("manifest", str(builds[0])).stdout)
    ok = run("verify", str(builds[0]), str(manifest_file), "--root", str(tmp_path / "root"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verified"] is True
    (builds[0] / "index.html").write_text("tampered")
    bad = run("verify", str(builds[0]), str(manifest_file))
    assert bad.returncode == EXIT_USAGE and b"index.html" in bad.stderr


def test_check_url_compares_the_served_body(tmp_path):
    (tmp_path / "index.html").write_text("<h1>live</h1>")
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        right = hashlib.sha256(b"<h1>live</h1>").hexdigest()
        assert run("check-url", url, "--sha256", right).returncode == 0
        wrong = run("check-url", url, "--sha256", "0" * 64)
        assert wrong.returncode == EXIT_FAILURE and b"other content" in wrong.stderr
        missing = run("check-url", url.replace("index.html", "nope.html"))
        assert missing.returncode == EXIT_FAILURE and b"404" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_prune_keeps_current_and_protected_releases(tmp_path, builds):
    root = tmp_path / "root"
    root.mkdir()
    first, second = stage(root, builds[0]), stage(root, builds[1])
    from sync_agent.host.releases import switch

    switch(root, second["release"])
    result = run("prune", "--root", str(root), "--keep", "1", "--json")
    assert json.loads(result.stdout)["removed"] == [first["release"]]
    assert run("prune", "--root", str(root), "--keep", "0").returncode == EXIT_USAGE
