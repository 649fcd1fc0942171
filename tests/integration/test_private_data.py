"""Private shared data against a real Redis and real agents (issue 20; docs/configuration.md, "Private data"): a
private value reaches the private templates and nothing that is served, logged or recorded; an agent of the pinned
earlier commit skips it and writes nothing of it; the live stream never carries it; export/import and a recovery
from what a host holds carry it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_agent.control.datafile import checked_values
from sync_agent.control.recover import Held
from sync_agent.errors import EXIT_USAGE

from .conftest import AGENT_PASSWORD, KEYS, Agent, Fleet, Live, eventually
from .test_data_file import run
from .test_history import earlier_controller  # noqa: F401 - the pinned commit's package, a fixture
from .test_live import data_events, event_id

pytestmark = pytest.mark.integration

SECRET = "upstream-tok-5b1f09e2c3"  # searched for, as bytes, in every file, log and record
TEMPLATES = {
    "env.js.j2": "window.__ENV__ = {{ {'release': release.id, 'data': data} | tojson }};\n",
    "upstream.conf.private.j2": 'proxy_set_header Authorization "Bearer {{ private.upstream_token }}";\n',
}


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under folder whose bytes hold text (symlinks not followed)."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and text.encode() in path.read_bytes():
            found.append(str(path.relative_to(folder)))
    return sorted(found)


def upstream(agent: Agent) -> str:
    return (agent.root / "private" / "upstream.conf").read_text()


def test_a_private_value_reaches_the_private_template_and_no_served_file_log_or_record(
        fleet: Fleet, publisher_env: dict[str, str]) -> None:
    agent = fleet.agent("web1", templates=TEMPLATES)
    assert run(publisher_env, "data", "set", "mode", '"live"').returncode == 0
    made = run(publisher_env, "data", "set", "--private", "upstream_token", json.dumps(SECRET), "--json")
    assert made.returncode == 0, made.stderr
    assert SECRET not in made.stdout + made.stderr
    revision = json.loads(made.stdout)["revision"]
    fleet.wait_revision(agent, revision)
    eventually(lambda: SECRET in upstream(agent), what="the private template rendered")

    assert files_holding(agent.root, SECRET) == ["private/data.json", "private/upstream.conf"]
    assert agent.data() == {"mode": "live"}
    assert SECRET not in agent.log()
    assert (agent.root / "private").stat().st_mode & 0o777 == 0o750

    entries = fleet.admin.lrange(KEYS.changes, 0, -1)
    assert not [entry for entry in entries if SECRET in entry]
    entry = json.loads(entries[0])
    assert (entry["what"], entry["key"], entry["private"], entry["rev"]) == ("private set", "upstream_token", True,
                                                                            revision)

    listed = run(publisher_env, "data", "list")
    assert listed.returncode == 0 and SECRET not in listed.stdout
    assert "upstream_token (private" in listed.stdout and 'mode = "live"' in listed.stdout
    assert json.loads(run(publisher_env, "data", "list", "--json").stdout) == {"mode": "live"}
    shown = json.loads(run(publisher_env, "data", "list", "--private", "--json").stdout)
    assert shown == {"data": {"mode": "live"}, "private": {"upstream_token": SECRET}}
    hidden = run(publisher_env, "data", "get", "upstream_token")
    assert hidden.returncode == EXIT_USAGE and "--private" in hidden.stderr and SECRET not in hidden.stderr
    assert json.loads(run(publisher_env, "data", "get", "--private", "upstream_token").stdout) == SECRET

    # A key is public or private: the secret set again without --private is refused, not served.
    again = run(publisher_env, "data", "set", "upstream_token", json.dumps(SECRET + "-new"))
    assert again.returncode == EXIT_USAGE and "private key" in again.stderr
    assert fleet.store.data_list() == {"mode": "live"}

    gone = run(publisher_env, "data", "del", "--private", "upstream_token", "--json")
    fleet.wait_revision(agent, json.loads(gone.stdout)["revision"])
    assert json.loads((agent.root / "private" / "data.json").read_text()) == {}


@pytest.fixture
def earlier_agent(fleet: Fleet, earlier_controller: Path) -> Iterator[Agent]:  # noqa: F811 - the fixture above
    """An agent of the pinned earlier commit (run from its `git archive`), with the templates a rolling upgrade
    ships before it restarts it: the private one included."""
    agent = fleet.agent("old1", start=False, templates=TEMPLATES)
    fleet.agents.remove(agent)  # its log is checked here, not by the fleet fixture (an older agent logs otherwise)
    # Its ACL user as that commit made it (it wrote its status with HSET), as on a fleet not upgraded yet.
    old_acl = subprocess.run([sys.executable, "-m", "sync_agent", "--namespace", KEYS.namespace, "acl", "--host",
                              agent.host, "--json"], capture_output=True, text=True, check=True,
                             env={**agent.env, "PYTHONPATH": str(earlier_controller)}, cwd=earlier_controller)
    fleet.admin.execute_command("ACL", "SETUSER", f"agent-{agent.host}", "reset", "on", f">{AGENT_PASSWORD}",
                                *json.loads(old_acl.stdout)["rules"])
    handle = open(agent.log_path, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "sync_agent", "run", "--config", str(agent.config)],
                               stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**agent.env, "PYTHONPATH": str(earlier_controller)}, cwd=earlier_controller)
    try:
        yield agent
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        handle.close()
        print(f"--- {agent.host} (earlier commit) log ---\n{agent.log()}")


def test_an_agent_of_the_earlier_commit_skips_the_private_event_and_writes_nothing_of_it(
        fleet: Fleet, earlier_agent: Agent) -> None:
    new = fleet.agent("web1", templates=TEMPLATES)
    fleet.store.data_set("mode", '"before"')
    fleet.wait_data(earlier_agent, {"mode": "before"})
    fleet.store.data_set("upstream_token", json.dumps(SECRET), private=True)
    eventually(lambda: "unknown message type 'private'" in earlier_agent.log(), what="the earlier agent skipped it")
    last = fleet.store.data_set("mode", '"after"')  # a gap for the earlier agent: it reads the snapshot
    fleet.wait_data(earlier_agent, {"mode": "after"})
    fleet.wait_revision(new, last.revision)
    eventually(lambda: SECRET in upstream(new), what="the upgraded agent rendered it")

    assert files_holding(earlier_agent.root, SECRET) == []
    assert SECRET not in earlier_agent.log()
    assert os.path.getsize(earlier_agent.log_path) > 0
    old_status = f"{KEYS.namespace}:status:old1"  # the hash that commit's agent writes
    eventually(lambda: (h := fleet.admin.hgetall(old_status)).get("revision") == str(last.revision)
               and h.get("state") == "ready", what="old1 ready at the last revision")  # a skipped type degrades nothing


def test_export_import_and_a_recovery_from_a_host_round_trip_private_keys(
        fleet: Fleet, publisher_env: dict[str, str], tmp_path: Path) -> None:
    agent = fleet.agent("web1", templates=TEMPLATES)
    fleet.store.data_set("mode", '"live"')
    change = fleet.store.data_set("upstream_token", json.dumps(SECRET), private=True)
    fleet.wait_revision(agent, change.revision)
    eventually(lambda: SECRET in upstream(agent), what="rendered")

    public_only = tmp_path / "public.json"
    left_out = run(publisher_env, "data", "export", "--file", str(public_only))
    assert left_out.returncode == 0 and "1 private key(s) not exported" in left_out.stderr
    assert SECRET not in public_only.read_text() and SECRET not in left_out.stdout
    full = tmp_path / "full.json"
    assert run(publisher_env, "data", "export", "--private", "--file", str(full)).returncode == 0
    assert json.loads(full.read_text())["private"] == {"upstream_token": SECRET}
    assert full.stat().st_mode & 0o777 == 0o600

    fleet.admin.flushdb()
    fleet.recreate_users()
    imported = run(publisher_env, "data", "import", str(full), "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert result["new_epoch"] and result["private_set"] == ["upstream_token"] and SECRET not in imported.stdout
    fleet.wait_revision(agent, result["revision"])
    assert fleet.store.private_list() == {"upstream_token": SECRET}
    assert run(publisher_env, "data", "import", str(public_only)).returncode == 0  # no "private": left alone
    assert fleet.store.private_list() == {"upstream_token": SECRET}

    # A recovery reads what the host holds (`sync-agent status --data`, as root over SSH on a fleet), private
    # data included, and publishes it as the new epoch; the fleet tier runs the whole `fab recover`.
    status = run({**publisher_env, "PATH": os.environ["PATH"]}, "status", "--root", str(agent.root), "--data",
                 "--json")
    assert status.returncode == 0, status.stderr
    held = Held.from_answer("web1", json.loads(status.stdout))
    assert held.private == {"upstream_token": SECRET} and not held.problem
    fleet.admin.flushdb()
    fleet.recreate_users()
    recovered = fleet.store.seed("recover", held.applied, checked_values(held.data or {}, "web1"),
                                 private=checked_values(held.private or {}, "web1", private=True))
    fleet.wait_revision(agent, recovered.revision)
    eventually(lambda: fleet.status("web1")["state"] == "ready", what="web1 follows the recovered store")
    assert fleet.store.private_list() == {"upstream_token": SECRET}
    assert SECRET in upstream(agent) and agent.data() == {"mode": "live"}


def test_the_live_stream_carries_no_private_key_live_or_on_a_resume(fleet: Fleet, live: Live) -> None:
    agent = live.agent("web1", ring=2)
    fleet.store.data_set("upstream_token", json.dumps(SECRET), private=True)
    seen = fleet.store.data_set("mode", '"a"')
    fleet.wait_revision(agent, seen.revision)
    page = live.stream("web1")
    events = [page.next()]
    assert events[0].type == "snapshot" and events[0].body["data"] == {"mode": "a"}
    fleet.store.data_set("upstream_token", json.dumps(SECRET + "-2"), private=True)
    last = fleet.store.data_set("mode", '"b"')
    events.append(page.next())  # the private change sends nothing; the next frame is the public one
    assert (events[-1].type, events[-1].body["key"], events[-1].id) == ("data", "mode", event_id(last))
    page.close()

    for n in range(3):  # more private changes than the ring (2) holds: the resume reads the store's record
        fleet.store.data_set("upstream_token", json.dumps(f"{SECRET}-{n}"), private=True)
    after = fleet.store.data_set("mode", '"c"')
    fleet.wait_revision(agent, after.revision)
    again = live.stream("web1", event_id(last))
    resumed = again.events(2)
    assert data_events(resumed[:1]) == [("set", "mode", "c")] and resumed[1].type == "release"
    assert any(c.startswith("store:") for c in again.comments), again.comments  # replayed, not a snapshot
    seen_by_pages = repr([(e.type, e.id, e.body) for e in events + resumed]) + repr(page.comments + again.comments)
    assert SECRET not in seen_by_pages and "upstream_token" not in seen_by_pages
