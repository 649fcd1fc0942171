"""The agent's shared files are replaced whole: a reader sees the old content or the new, never a mix or a gap."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sync_agent.host.shared_data import SharedFiles, replace_file

pytestmark = pytest.mark.unit


def test_replace_file_creates_then_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    replace_file(target, b"first")
    replace_file(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert os.listdir(tmp_path) == ["data.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_reader_never_sees_a_missing_or_partial_data_file(tmp_path: Path) -> None:
    files = SharedFiles(tmp_path, None, "web1")
    files.write_data({"n": 0, "pad": "x" * 4096})
    bodies = {f'{{"n":{n},"pad":"{"x" * 4096}"}}'.encode() for n in range(300)}
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append((tmp_path / "data.json").read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 300):
            files.write_data({"n": n, "pad": "x" * 4096})
    finally:
        done.set()
        reader.join()
    assert seen and all(body in bodies for body in seen)
    assert sorted(os.listdir(tmp_path)) == ["data.json"]


def test_under_the_units_umask_0077_what_nginx_serves_stays_world_readable(tmp_path: Path) -> None:
    """The unit runs the agent with UMask=0077: shared/, data.json and the rendered templates are still 0755/0644."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "env.js.j2").write_text("window.ENV = {{ data | tojson }};\n")
    shared = tmp_path / "srv" / "shared"
    old_umask = os.umask(0o077)
    try:
        files = SharedFiles(shared, templates, "web1")
        files.ensure_dir()
        files.write_data({"flag": True})
        files.write_data({"flag": False})  # the second write replaces an existing file (renameat2)
        assert files.render({"flag": False}, None, 2) == {}
    finally:
        os.umask(old_umask)
    assert shared.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in shared.iterdir()} == {"data.json": 0o644, "env.js": 0o644}
