"""Private data on the host, without Redis: a private event never lands in the public data, a public template never
sees a private value, and `*.private.j2` renders into private/ alone (docs/configuration.md, "Private data")."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sync_agent.errors import ProtocolError
from sync_agent.host.shared_data import SharedFiles
from sync_agent.host.state import AppliedState, Batch
from sync_agent.protocol import parse_message

pytestmark = pytest.mark.unit

SECRET = "tok-9f1c2e77-private"


def event(kind: str, rev: int, op: str = "set", **extra: object) -> bytes:
    return json.dumps({"v": 1, "type": kind, "epoch": "e1", "rev": rev, "id": f"{rev:016x}",
                       "parent": f"{rev - 1:016x}" if rev > 1 else "", "op": op, "key": "token", **extra}).encode()


def test_a_private_event_changes_the_private_data_and_never_the_public_data() -> None:
    message = parse_message(event("private", 1, value=SECRET))
    assert message.data is None and message.private is not None  # what reads message.data cannot meet it
    state = AppliedState("web1", epoch="e1")
    batch = Batch()
    state.apply_message(message, batch)
    assert state.private == {"token": SECRET} and state.data == {}
    assert batch.private and not batch.data
    state.apply_message(parse_message(event("private", 2, op="del")), batch)
    assert state.private == {}


def test_a_private_event_is_checked_like_a_data_event() -> None:
    with pytest.raises(ProtocolError, match="private set message has no value"):
        parse_message(event("private", 1))
    with pytest.raises(ProtocolError, match="data key"):
        parse_message(event("private", 1, value=1).replace(b'"token"', b'"../x"'))


@pytest.fixture
def files(tmp_path: Path) -> SharedFiles:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "env.js.j2").write_text("window.ENV = {{ data | tojson }};\n")
    (templates / "upstream.conf.private.j2").write_text(
        'proxy_set_header Authorization "Bearer {{ private.token }}"; # {{ data.mode }}\n')
    shared, private = tmp_path / "srv" / "shared", tmp_path / "srv" / "private"
    result = SharedFiles(shared, templates, "web1", private)
    result.ensure_dir()
    old = os.umask(0o077)  # the unit's
    try:
        result.ensure_private_dir()
    finally:
        os.umask(old)
    return result


def test_a_private_template_renders_into_private_and_a_public_one_sees_no_private_value(files: SharedFiles) -> None:
    assert files.render({"mode": "live"}, None, 3, {"token": SECRET}) == {}
    assert files.private_dir is not None
    assert (files.private_dir / "upstream.conf").read_text() == \
        f'proxy_set_header Authorization "Bearer {SECRET}"; # live\n'
    assert sorted(os.listdir(files.shared_dir)) == ["env.js"]  # nothing of the private template under shared/
    assert SECRET not in (files.shared_dir / "env.js").read_text()
    assert files.private_dir.stat().st_mode & 0o777 == 0o750
    assert (files.private_dir / "upstream.conf").stat().st_mode & 0o777 == 0o640


def test_a_public_template_that_names_private_data_fails_and_renders_nothing(files: SharedFiles) -> None:
    assert files.templates_dir is not None
    (files.templates_dir / "leak.txt.j2").write_text("{{ private.token }}\n")
    failures = files.render({}, None, 1, {"token": SECRET})
    assert "leak.txt.j2" in failures and "'private' is undefined" in failures["leak.txt.j2"]
    assert not (files.shared_dir / "leak.txt").exists()


def test_a_failing_private_template_reports_no_private_value(files: SharedFiles) -> None:
    assert files.templates_dir is not None
    (files.templates_dir / "bad.private.j2").write_text("{{ private.token + 1 }}\n")  # str + int: TypeError
    failures = files.render({}, None, 1, {"token": SECRET})
    assert failures["bad.private.j2"] == "TypeError" and SECRET not in files.error_summary()


def test_the_private_data_file_round_trips_for_recovery(files: SharedFiles) -> None:
    assert files.read_private() is None  # an agent from before private data wrote none
    files.write_private({"token": SECRET, "n": 1})
    assert files.read_private() == {"token": SECRET, "n": 1}
    assert files.private_dir is not None and (files.private_dir / "data.json").stat().st_mode & 0o777 == 0o640
