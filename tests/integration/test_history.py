"""A store that goes back in time, forged events, and a controller of an earlier commit, against a real Redis and
real agents (issue 14; docs/protocol.md, "The change chain"). The fleet tier runs the same faults with `fab`
(tests/fleet/test_recover.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sync_agent.errors import StoreForeign
from tests.fleet.test_upgrade import UPGRADE_FROM

from .conftest import KEYS, NAMESPACE, REPO, Fleet, eventually

pytestmark = pytest.mark.integration


def error_of(fleet: Fleet, host: str, text: str) -> dict[str, str]:
    """Until host reports `degraded` with text in its error; its status."""
    return eventually(lambda: (status := fleet.status(host)).get("state") == "degraded"
                      and text in status.get("error", "") and status, what=f"{host} degraded: {text}")


def test_redis_restarted_from_an_older_save_is_refused_also_after_a_restart_and_after_more_changes(
        fleet: Fleet, fresh_redis) -> None:
    agents = [fleet.agent("web1"), fleet.agent("web2")]
    fleet.store.data_set("note", '"saved"')
    fleet.admin.save()  # the RDB an older restart comes back to
    newest = [fleet.store.data_set("note", f'"newer {n}"') for n in range(3)][-1]
    for agent in agents:
        fleet.wait_revision(agent, newest.revision)
    fresh_redis.restart(kill=True)  # loads the older save: same epoch, lower revision
    fleet.recreate_users()
    for agent in agents:
        status = error_of(fleet, agent.host, "went back in time")
        assert "fab recover" in status["error"]
        assert agent.data() == {"note": "newer 2"}, "what the host serves stays"
        assert int(status["revision"]) == newest.revision

    agents[0].stop()
    agents[0].start()  # restarted at revision 0 in memory, but the applied point is on disk
    error_of(fleet, "web1", "went back in time")
    assert agents[0].data() == {"note": "newer 2"}

    for n in range(4):  # the restored store takes more changes than the agents had seen: another branch
        fleet.store.data_set("note", f'"branch {n}"')
    for agent in agents:
        error_of(fleet, agent.host, "went another way")
        assert agent.data() == {"note": "newer 2"}


def test_a_forged_event_with_a_foreign_id_costs_one_resync_and_no_verdict(fleet: Fleet) -> None:
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", '"real"')
    fleet.wait_revision(agent, change.revision)
    eventually(lambda: fleet.status("web1")["state"] == "ready", what="ready")
    before = int(fleet.status("web1")["resyncs"])
    epoch = fleet.admin.get(KEYS.epoch)
    for forged in ({"rev": change.revision + 1, "id": "00000000deadbeef", "parent": "00000000deadbeef"},
                   {"rev": change.revision, "id": "00000000deadbeef", "parent": ""}):
        fleet.admin.publish(KEYS.events, json.dumps({"v": 1, "type": "data", "epoch": epoch, "op": "set",
                                                     "key": "k", "value": "forged", **forged}))
        eventually(lambda n=before + 1: int(fleet.status("web1")["resyncs"]) >= n, what="the snapshot read")
        before = int(fleet.status("web1")["resyncs"])
    status = fleet.status("web1")
    assert status["state"] == "ready" and status["error"] == "" and agent.data() == {"k": "real"}
    assert int(status["revision"]) == change.revision


@pytest.fixture(scope="module")
def earlier_controller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sync_agent package of the pinned earlier commit (the one the upgrade test deploys from)."""
    target = tmp_path_factory.mktemp("earlier")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", UPGRADE_FROM, "sync_agent"], check=True,
                             capture_output=True).stdout
    archive_path = target / "sync_agent.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    return target


def test_a_controller_of_the_earlier_commit_writing_to_the_new_store_is_not_applied_and_agents_say_why(
        fleet: Fleet, fresh_redis, earlier_controller: Path) -> None:
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", '"new controller"')
    fleet.wait_revision(agent, change.revision)
    old = subprocess.run([sys.executable, "-m", "sync_agent", "--namespace", NAMESPACE, "data", "set", "k",
                          '"old controller"', "--redis", fresh_redis.url], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(earlier_controller)}, cwd=earlier_controller)
    assert old.returncode == 0, old.stderr  # it cannot know: its scripts bump the revision as they always did
    assert fleet.store.data_get("k") == "old controller"
    status = error_of(fleet, "web1", "keeps no chain")
    assert "upgrade every controller" in status["error"]
    assert agent.data() == {"k": "new controller"} and int(status["revision"]) == change.revision
    with pytest.raises(StoreForeign, match="older frontfleet"):
        fleet.store.data_set("k", '"on top"')  # and no new controller builds on what it wrote


@pytest.mark.parametrize("plant", ["not json", "a symlink", "a fifo"])
def test_an_unreadable_applied_file_is_reported_and_the_agent_starts_as_a_new_host(fleet: Fleet, plant: str,
                                                                                   tmp_path: Path) -> None:
    """Not JSON, or (planted by the agent's user) a symlink or a FIFO: reported, replaced, never followed."""
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", '"v"')
    fleet.wait_revision(agent, change.revision)
    agent.stop()
    applied = agent.shared / "applied.json"
    applied.unlink()
    if plant == "not json":
        applied.write_text("{not json")
    elif plant == "a symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps({"epoch": "x", "revision": 1, "id": "y", "left": []}))
        applied.symlink_to(tmp_path / "elsewhere.json")
    else:
        os.mkfifo(applied)  # a reader that followed it would block the agent's start for good
    pid = fleet.status("web1")["pid"]
    agent.start()
    eventually(lambda: "starting as a new host would" in agent.log(), what="the unreadable file reported")
    eventually(lambda: (s := fleet.status("web1"))["state"] == "ready" and s["pid"] != pid, what="the new agent ready")
    eventually(lambda: json.loads((agent.shared / "applied.json").read_text())["revision"] == change.revision,
               what="applied.json written again")
