"""`sync-agent data export` / `data import` (`fab data-export` / `fab data-import`) against a real Redis and real
agents: a wiped store gets its data back from a file, byte for byte on every host; a bad file changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sync_agent.errors import EXIT_USAGE
from tests.integration.conftest import Fleet, eventually

pytestmark = pytest.mark.integration

SYNC_AGENT = str(Path(sys.executable).with_name("sync-agent"))
VALUES = {"banner": {"text": "Grüße, \"quoted\"", "level": 3}, "flags": [True, False, None], "price": 19.99,
          "big": 12345678901234567890, "empty": {}}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYNC_AGENT, *args], env=env, capture_output=True, text=True, timeout=30)


def test_export_then_a_wiped_store_then_import_gives_every_host_byte_identical_data(
        fleet: Fleet, publisher_env: dict[str, str], tmp_path: Path) -> None:
    for key, value in VALUES.items():
        fleet.store.data_set(key, json.dumps(value))
    agents = [fleet.agent("web1"), fleet.agent("web2")]
    for agent in agents:
        fleet.wait_data(agent, VALUES)
    before = {agent.host: (agent.shared / "data.json").read_bytes() for agent in agents}

    export = tmp_path / "data.json"
    exported = run(publisher_env, "data", "export", "--file", str(export))
    assert exported.returncode == 0, exported.stderr
    assert f"exported {len(VALUES)} key(s)" in exported.stdout and export.stat().st_mode & 0o777 == 0o600
    assert json.loads(export.read_text())["data"] == VALUES

    fleet.admin.flushdb()  # Redis lost everything; the hosts keep serving what they had
    fleet.recreate_users()
    imported = run(publisher_env, "data", "import", str(export), "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert sorted(result["set"]) == sorted(VALUES) and result["new_epoch"]  # one step: a new epoch holding it all
    for agent in agents:  # it continues from what the hosts applied, so they follow it
        fleet.wait_revision(agent, result["revision"])
        fleet.wait_data(agent, VALUES)
        eventually(lambda a=agent: fleet.status(a.host)["state"] == "ready", what=f"{agent.host} ready")
    assert {agent.host: (agent.shared / "data.json").read_bytes() for agent in agents} == before

    again = run(publisher_env, "data", "import", str(export))
    assert again.returncode == 0 and f"0 key(s) set, 0 deleted, {len(VALUES)} unchanged" in again.stdout


def test_import_replace_deletes_the_keys_the_file_does_not_hold(fleet: Fleet, publisher_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    fleet.store.data_set("keep", "1")
    export = tmp_path / "data.json"
    assert run(publisher_env, "data", "export", "--file", str(export)).returncode == 0
    fleet.store.data_set("extra", "2")
    merged = run(publisher_env, "data", "import", str(export))
    assert merged.returncode == 0 and fleet.store.data_list() == {"keep": 1, "extra": 2}
    replaced = run(publisher_env, "data", "import", str(export), "--replace")
    assert replaced.returncode == 0 and "1 deleted" in replaced.stdout
    assert fleet.store.data_list() == {"keep": 1}


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "is not JSON"),
    ('{"data": {}}', "is not a frontfleet data export"),
    ('{"format": "frontfleet-data/1", "data": {"ok": 1, "../evil": 2}}', "key '../evil'"),
    ('{"format": "frontfleet-data/1", "data": {"ok": 1, "deep": ' + "[" * 40 + "]" * 40 + "}}", "nested deeper"),
])
def test_a_bad_file_is_refused_whole_and_nothing_is_imported(fleet: Fleet, publisher_env: dict[str, str],
                                                              tmp_path: Path, content: str, message: str) -> None:
    fleet.store.data_set("kept", '"as it was"')
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = run(publisher_env, "data", "import", str(bad))
    assert result.returncode == EXIT_USAGE and message in result.stderr and "Traceback" not in result.stderr
    assert fleet.store.data_list() == {"kept": "as it was"}


def test_an_import_over_the_data_sets_caps_is_refused_before_any_write(fleet: Fleet, publisher_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"format": "frontfleet-data/1", "data": {f"k{i}": i for i in range(1001)}}))
    result = run(publisher_env, "data", "import", str(big))
    assert result.returncode == EXIT_USAGE and "the limits are 1000 keys" in result.stderr
    assert fleet.store.data_list() == {}
