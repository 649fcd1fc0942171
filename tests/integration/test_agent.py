"""The sync agent as users meet it: a subprocess under its ACL user, files on disk, its status in Redis, its log."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sync_agent.errors import StoreEmpty
from sync_agent.snapshot import Point

from .conftest import KEYS, NAMESPACE, chained_change, eventually, stage, write_config

pytestmark = pytest.mark.integration


def test_agent_applies_the_snapshot_on_start(fleet, builds):
    fleet.store.data_set("flag", "true")
    fleet.store.data_set("banner", '{"text": "hi"}')
    agent = fleet.agent("web1", start=False)
    release = stage(agent.root, builds("one"))
    change = fleet.store.activate(release, {"label": "v1"})
    agent.start()
    status = fleet.wait_revision(agent, change.revision)
    fleet.wait_data(agent, {"flag": True, "banner": {"text": "hi"}})
    assert agent.current() == release
    assert (agent.root / "live" / "current" / "index.html").read_text() == "<html><body>one</body></html>\n"
    eventually(lambda: fleet.status("web1")["state"] == "ready")
    assert status["release"] == release
    assert status["error"] == ""
    assert "NOPERM" not in agent.log()


def test_live_changes_reach_two_agents(fleet):
    first, second = fleet.agent("web1"), fleet.agent("web2")
    change = fleet.store.data_set("a", "1")
    for agent in (first, second):
        fleet.wait_data(agent, {"a": 1})
    change = fleet.store.data_set("b", '"x"')
    fleet.store.data_del("a")
    change = fleet.store.data_set("c", "[1, 2]")
    for agent in (first, second):
        fleet.wait_data(agent, {"b": "x", "c": [1, 2]})
        fleet.wait_revision(agent, change.revision)
    assert "resync (gap" not in first.log() + second.log()
    assert "NOPERM" not in first.log() + second.log()


def test_agent_converges_after_missing_three_changes(fleet):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, change.revision)
    assert agent.stop() == 0
    fleet.store.data_set("a", "2")
    fleet.store.data_set("b", "true")
    change = fleet.store.data_set("c", '"three"')
    assert agent.data() == {"a": 1}  # still what was served before
    agent.start()
    fleet.wait_revision(agent, change.revision)
    fleet.wait_data(agent, {"a": 2, "b": True, "c": "three"})


def test_revision_gap_triggers_a_resync(fleet):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("seen", "1")
    fleet.wait_revision(agent, change.revision)
    admin = fleet.admin
    # A change stored but never published (its event lost), then one published with the next revision.
    admin.hset(KEYS.data, "lost", "2")
    chained_change(admin)
    admin.hset(KEYS.data, "after", "3")
    rev = chained_change(admin, {"type": "data", "op": "set", "key": "after", "value": 3})
    fleet.wait_data(agent, {"seen": 1, "lost": 2, "after": 3})
    fleet.wait_revision(agent, rev)
    assert f"resync (gap: got revision {rev} after {change.revision})" in agent.log()


def test_redis_restarted_without_its_data_is_refused_changes_and_agents_keep_serving_until_a_recovery(
        fleet, fresh_redis):
    agents = [fleet.agent("web1"), fleet.agent("web2")]
    old = fleet.store.data_set("old", "1")
    for agent in agents:
        fleet.wait_revision(agent, old.revision)
    fresh_redis.restart(kill=True)
    fleet.recreate_users()
    for agent in agents:
        status = eventually(lambda a=agent: fleet.status(a.host).get("state") == "degraded" and fleet.status(a.host),
                            what="degraded after the data loss")
        assert "store is empty" in status["error"] and "fab recover" in status["error"]
    with pytest.raises(StoreEmpty, match="fab recover"):
        fleet.store.data_set("new", "2")  # no epoch by accident: one key would replace every host's data
    fleet.store.init()  # a new store made on top of a fleet that holds data: not followed
    for agent in agents:
        eventually(lambda a=agent: "does not continue from" in fleet.status(a.host).get("error", ""),
                   what="the new store refused")
        assert agent.data() == {"old": 1}  # keeps serving what is on disk
    applied = Point.from_json(json.loads((agents[0].shared / "applied.json").read_text()))
    assert (applied.epoch, applied.revision) == (old.epoch, old.revision)
    recovered = fleet.store.seed("recover", applied, {"old": "1", "new": "2"}, replace=True)
    for agent in agents:
        fleet.wait_data(agent, {"old": 1, "new": 2})
        status = fleet.wait_revision(agent, recovered.revision)
        eventually(lambda a=agent: fleet.status(a.host)["state"] == "ready", what="ready again")
        assert status["epoch"] == recovered.epoch != old.epoch


def test_agent_reconnects_after_redis_is_killed_and_converges(fleet, fresh_redis):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", "1")
    fleet.wait_revision(agent, change.revision)
    fleet.admin.save()  # what a Redis with persistence has on disk when it is killed
    fresh_redis.stop(kill=True)
    eventually(lambda: agent.log().count("Redis connection failed") >= 2, what="retries while Redis is down")
    assert agent.process is not None and agent.process.poll() is None
    fresh_redis.start()
    fleet.recreate_users()
    change = fleet.store.data_set("k", "2")
    fleet.wait_data(agent, {"k": 2})
    fleet.wait_revision(agent, change.revision)
    retry = next(line for line in agent.log().splitlines() if "Redis connection failed" in line)
    assert "retrying in" in retry and "attempt 1" in retry


@pytest.mark.parametrize("which", ["every connection", "the subscription"])
def test_half_open_connection_is_noticed_by_the_probe(fleet, proxy, which):
    agent = fleet.agent("web1", port=proxy.port, intervals={"reconcile": 60})  # only the probe can notice
    change = fleet.store.data_set("k", "1")
    fleet.wait_revision(agent, change.revision)
    proxy.freeze(only_first=(which == "the subscription"))
    change = fleet.store.data_set("k", "2")
    fleet.wait_data(agent, {"k": 2}, timeout=15)
    fleet.wait_revision(agent, change.revision)
    log = agent.log()
    assert "Redis connection failed" in log
    if which == "the subscription":
        assert "a probe did not come back" in log
    change = fleet.store.data_set("k", "3")  # and the new subscription is live
    fleet.wait_data(agent, {"k": 3})


def with_fault(fault: str) -> tuple[str, ...]:
    """Agent.start's prefix that runs the agent with a fault of agent_faults.py built in."""
    return (sys.executable, str(Path(__file__).with_name("agent_faults.py")), fault)


def test_a_session_whose_helper_goes_on_after_its_cancellation_still_ends_and_reconnects(fleet):
    """The subscription dies; the session's heartbeat ignores its first cancellation (as a cancel lost in Python
    3.11's wait_for lets it), so heartbeats go on and the host looks alive. The session must end anyway,
    reconnect and resync, or nothing reads the subscription ever again."""
    agent = fleet.agent("web1", start=False, intervals={"reconcile": 60})
    agent.start(prefix=with_fault("lost-cancel"))
    fleet.wait_revision(agent, 0)
    fleet.admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "USER", "agent-web1")
    change = fleet.store.data_set("k", "1")
    fleet.wait_revision(agent, change.revision, timeout=15)
    log = agent.log()
    assert "FAULT lost-cancel" in log and "Redis connection failed" in log
    change = fleet.store.data_set("k", "2")  # and the new subscription is live
    fleet.wait_data(agent, {"k": 2})


def test_a_reading_loop_stuck_on_an_await_in_a_batch_is_a_lost_probe(fleet):
    """A batch that awaits something that never comes reads nothing meanwhile. Only the time a batch runs is
    excused from the probe's age, so the probe ends the session; the reconnect's snapshot brings the host to
    what it missed."""
    agent = fleet.agent("web1", start=False, intervals={"reconcile": 60},  # only the probe can notice
                        templates={"env.js.j2": "window.__ENV__ = {{ data | tojson }};\n"})
    agent.start(prefix=with_fault("stuck-render"))
    fleet.wait_revision(agent, 0)
    fleet.store.data_set("k", "1")  # its batch gets stuck in the render
    eventually(lambda: "FAULT stuck-render" in agent.log(), what="the render stuck")
    change = fleet.store.data_set("k", "2")
    fleet.wait_revision(agent, change.revision, timeout=15)
    fleet.wait_data(agent, {"k": 2})
    assert "a probe did not come back" in agent.log()


def test_burst_of_a_thousand_changes_ends_on_the_last_revision(fleet):
    agents = [fleet.agent(f"web{n}", templates={"env.js.j2": "window.__ENV__ = {{ data | tojson }};\n"})
              for n in (1, 2, 3)]
    for agent in agents:
        eventually(lambda a=agent: fleet.status(a.host), what="connected")
    for n in range(1000):
        change = fleet.store.data_set(f"k{n % 50}", str(n))
    expected = {f"k{n % 50}": n for n in range(950, 1000)}
    for agent in agents:
        fleet.wait_revision(agent, change.revision, timeout=30)
        assert agent.data() == expected
        applied = agent.log().count("applied revisions")
        assert applied < 1000  # coalesced: fewer writes than changes
    env = f"window.__ENV__ = {json.dumps(expected, sort_keys=True)};\n"  # rendered once the burst is over
    for agent in agents:
        eventually(lambda a=agent: (a.shared / "env.js").read_text() == env, what=f"{agent.host} env.js")


def test_deploy_switches_current_and_previous(fleet, builds):
    agent = fleet.agent("web1", templates={"release.txt.j2": "{{ release.id }} {{ release.label }}"})
    one, two = stage(agent.root, builds("one")), stage(agent.root, builds("two"))
    fleet.store.activate(one, {"label": "first"})
    eventually(lambda: agent.current() == one)
    change = fleet.store.activate(two, {"label": "second"})
    status = fleet.wait_revision(agent, change.revision)
    assert (agent.current(), agent.previous()) == (two, one)
    assert (status["release"], status["previous"]) == (two, one)
    assert int(status["switched_at_ns"]) > 0
    assert (agent.root / "live" / "current" / "index.html").read_text() == "<html><body>two</body></html>\n"
    eventually(lambda: (agent.shared / "release.txt").read_text() == f"{two} second")
    change = fleet.store.rollback()
    fleet.wait_revision(agent, change.revision)
    assert (agent.current(), agent.previous()) == (one, two)
    eventually(lambda: (agent.shared / "release.txt").read_text() == f"{one} first")


def test_override_moves_only_that_host_across_reconnect_and_reconcile(fleet, builds):
    web1, web2 = fleet.agent("web1"), fleet.agent("web2")
    one, two = builds("one"), builds("two")
    ids = {}
    for agent in (web1, web2):
        ids = {"one": stage(agent.root, one), "two": stage(agent.root, two)}
    fleet.store.activate(ids["one"])
    change = fleet.store.override(ids["two"], ["web2"])
    for agent in (web1, web2):
        fleet.wait_revision(agent, change.revision)
    assert (web1.current(), web2.current()) == (ids["one"], ids["two"])
    fleet.admin.execute_command("CLIENT", "KILL", "USER", "agent-web1")
    fleet.admin.execute_command("CLIENT", "KILL", "USER", "agent-web2")
    for agent in (web1, web2):
        eventually(lambda a=agent: a.log().count("connected to Redis") >= 2, what="reconnected")
    reconciles = fleet.admin.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    eventually(lambda: fleet.admin.info("commandstats")["cmdstat_exec"]["calls"] >= reconciles + 4,
               what="reconciles ran")
    assert (web1.current(), web2.current()) == (ids["one"], ids["two"])
    assert fleet.status("web1")["release"] == ids["one"]
    assert fleet.status("web2")["release"] == ids["two"]


def test_readers_never_see_a_missing_or_partial_file(fleet, builds):
    agent = fleet.agent("web1", templates={"env.js.j2": "window.__ENV__ = {{ data | tojson }};\n"})
    one, two = stage(agent.root, builds("one")), stage(agent.root, builds("two"))
    pages = {"<html><body>one</body></html>\n", "<html><body>two</body></html>\n"}
    change = fleet.store.activate(one)
    fleet.store.data_set("n", "0")
    fleet.wait_data(agent, {"n": 0})
    eventually(lambda: (agent.shared / "env.js").exists())
    problems: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                page = (agent.root / "live" / "current" / "index.html").read_text()
                data = json.loads((agent.shared / "data.json").read_text())
                env = (agent.shared / "env.js").read_text()
            except (OSError, ValueError) as err:
                problems.append(repr(err))
                continue
            if page not in pages:
                problems.append(f"partial page {page!r}")
            if "n" not in data:
                problems.append(f"partial data {data!r}")
            if not (env.startswith("window.__ENV__ = {") and env.endswith("};\n")):
                problems.append(f"partial env.js {env!r}")
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 201):
            change = fleet.store.activate(two if n % 4 == 1 else one) if n % 2 else fleet.store.data_set("n", str(n))
            time.sleep(0.002)
        fleet.wait_revision(agent, change.revision)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads[0] > 100
    assert agent.data() == {"n": 200}


def test_a_failing_template_keeps_its_last_output(fleet):
    agent = fleet.agent("web1", templates={"greeting.txt.j2": "{{ data.greeting.text }}",
                                           "escape.txt.j2": "{{ data.__class__.__mro__ }}"})
    fleet.store.data_set("greeting", '{"text": "hello"}')
    eventually(lambda: (agent.shared / "greeting.txt").read_text() == "hello")
    status = eventually(lambda: "escape.txt.j2" in fleet.status("web1").get("error", "") and fleet.status("web1"))
    assert not (agent.shared / "escape.txt").exists()  # the sandbox refused it
    (agent.root.parent / "templates" / "escape.txt.j2").unlink()
    change = fleet.store.data_set("greeting", '"no text any more"')
    status = fleet.wait_revision(agent, change.revision)
    status = eventually(lambda: "greeting.txt.j2" in fleet.status("web1")["error"] and fleet.status("web1"))
    assert (agent.shared / "greeting.txt").read_text() == "hello"
    assert "template greeting.txt.j2 failed" in agent.log()
    assert status["state"] == "ready"
    fleet.store.data_set("greeting", '{"text": "fixed"}')
    eventually(lambda: (agent.shared / "greeting.txt").read_text() == "fixed")
    eventually(lambda: fleet.status("web1")["error"] == "")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_is_sent_with_redis_down_and_the_watchdog_is_fed(fleet, tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"ff-notify-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(0.2)
    dead_port = fleet.redis_port + 1 if fleet.redis_port < 65535 else 1
    agent = fleet.agent("web1", port=dead_port, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    received: list[str] = []

    def got(prefix: str) -> bool:
        with contextlib.suppress(TimeoutError):
            received.extend(sock.recv(4096).decode().splitlines())
        return any(line.startswith(prefix) for line in received)

    try:
        eventually(lambda: got("READY=1"), what="READY=1")
        assert any(line.startswith("STATUS=degraded") for line in received)
        eventually(lambda: got("WATCHDOG=1"), what="WATCHDOG=1")
        assert agent.process is not None and agent.process.poll() is None
        agent.signal(signal.SIGTERM)
        eventually(lambda: got("STOPPING=1"), what="STOPPING=1")
        assert agent.process.wait(timeout=10) == 0
    finally:
        sock.close()


def test_sigterm_stops_the_agent_promptly(fleet):
    agent = fleet.agent("web1")
    eventually(lambda: "connected to Redis" in agent.log())
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.process is not None
    code = agent.process.wait(timeout=10)
    elapsed = time.monotonic() - started
    print(f"stopped in {elapsed:.3f}s")
    assert code == 0
    assert elapsed < 5
    assert "received SIGTERM: stopping" in agent.log()


def test_a_second_signal_forces_the_exit(fleet):
    agent = fleet.agent("web1")
    eventually(lambda: "connected to Redis" in agent.log())
    agent.signal(signal.SIGTERM)
    agent.signal(signal.SIGINT)
    assert agent.process is not None
    assert agent.process.wait(timeout=10) in (0, 1)


CONFIG_ERRORS = {
    "agent.host": ({"agent": {"release_root": "/srv/ff"}, "redis": {"url": "redis://127.0.0.1:6379"}},
                   "missing key agent.host"),
    "redis.urll": ({"agent": {"host": "web1", "release_root": "/srv/ff"},
                    "redis": {"url": "redis://127.0.0.1:6379", "urll": "x"}}, "unknown key redis.urll"),
    "redis.url": ({"agent": {"host": "web1", "release_root": "/srv/ff"}, "redis": {"url": "http://example"}},
                  "redis.url must be"),
    "redis.url database": ({"agent": {"host": "web1", "release_root": "/srv/ff"},
                            "redis": {"url": "redis://127.0.0.1:6379/3"}}, "redis.url names database '3'"),
    "intervals.probe": ({"agent": {"host": "web1", "release_root": "/srv/ff"},
                         "redis": {"url": "redis://127.0.0.1:6379"}, "intervals": {"probe": "fast"}},
                        "intervals.probe must be a number"),
    "intervals.heartbeat": ({"agent": {"host": "web1", "release_root": "/srv/ff"},
                             "redis": {"url": "redis://127.0.0.1:6379"}, "intervals": {"heartbeat": -1}},
                            "intervals.heartbeat must be a positive number"),
    "agent.host traversal": ({"agent": {"host": "../web1", "release_root": "/srv/ff"},
                              "redis": {"url": "redis://127.0.0.1:6379"}}, "agent.host"),
    "redis.password_file": ({"agent": {"host": "web1", "release_root": "/srv/ff"},
                             "redis": {"url": "redis://127.0.0.1:6379", "password_file": "/nonexistent/pw"}},
                            "redis.password_file"),
    "agent.log_level": ({"agent": {"host": "web1", "release_root": "/srv/ff", "log_level": "loud"},
                         "redis": {"url": "rediss://127.0.0.1:6379"}}, "agent.log_level must be one of"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_errors_exit_2_naming_the_key(tmp_path, case):
    from .conftest import agent_command

    sections, expected = CONFIG_ERRORS[case]
    config = write_config(tmp_path / "config.toml", sections)
    result = subprocess.run(agent_command(config), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(config) in lines[0]


def test_a_missing_config_file_exits_2(tmp_path):
    from .conftest import agent_command

    result = subprocess.run(agent_command(tmp_path / "nope.toml"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "cannot read the config file" in result.stderr


def _event(epoch: str, rev: int, **body: object) -> str:
    return json.dumps({"v": 1, "epoch": epoch, "rev": rev, **body})


BAD_MESSAGES = {
    "wrong schema": (lambda e, r: _event(e, r, type="data", op="set", value=1), "data key"),
    "not json": (lambda e, r: "{nope", "not valid JSON"),
    "990 levels deep": (lambda e, r: _event(e, r, type="data", op="set", key="deep", value=0).replace(
        '"value": 0', '"value": ' + "[" * 990 + "]" * 990), "nested deeper than"),
    "NaN": (lambda e, r: _event(e, r, type="data", op="set", key="n", value=float("nan")), "NaN is not a finite"),
    "1e999": (lambda e, r: _event(e, r, type="data", op="set", key="n", value=0).replace('"value": 0',
                                                                                      '"value": 1e999'),
              "not a finite number"),
    "not UTF-8": (lambda e, r: _event(e, r, type="data", op="set", key="u", value="x").encode().replace(
        b'"x"', b'"\xff\xfe"'), "utf-8"),
    "oversize": (lambda e, r: _event(e, r, type="data", op="set", key="big", value="x" * (1024 * 1024 + 10)),
                 "over the limit"),
    "unknown type": (lambda e, r: _event(e, r, type="nuke"), "unknown message type 'nuke'"),
    "traversal release id": (lambda e, r: _event(e, r, type="release", desired={"fleet": "../../etc"}),
                             "release id '../../etc'"),
    "traversal data key": (lambda e, r: _event(e, r, type="data", op="set", key="../x", value=1), "data key '../x'"),
    "traversal override": (lambda e, r: _event(e, r, type="release",
                                               desired={"fleet": None, "overrides": {"web1": ".."}}),
                           "release id '..'"),
}


def test_bad_messages_are_logged_skipped_and_reported(fleet):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", "0")
    fleet.wait_revision(agent, change.revision)
    for n, (name, (build, expected)) in enumerate(sorted(BAD_MESSAGES.items()), start=1):
        fleet.admin.publish(KEYS.events, build(change.epoch, change.revision + 1))
        status = eventually(lambda exp=expected: exp in fleet.status("web1")["error"] and fleet.status("web1"),
                            what=f"status error for {name}")
        assert status["state"] == "ready"
        assert status["error"].startswith("skipped a bad message")
        change = fleet.store.data_set("k", str(n))  # nothing lost: the next real change applies in order
        fleet.wait_data(agent, {"k": n})
        eventually(lambda: fleet.status("web1")["error"] == "", what=f"error cleared after {name}")
    log = agent.log()
    assert log.count("skipped a bad message") == len(BAD_MESSAGES)
    assert "resync (gap" not in log
    assert agent.process is not None and agent.process.poll() is None


def test_a_release_that_is_not_staged_is_reported_then_switched_once_staged(fleet, builds):
    agent = fleet.agent("web1")
    build = builds("late")
    from sync_agent.manifest import build_manifest

    release = build_manifest(build).release_id
    change = fleet.store.activate(release)
    status = fleet.wait_revision(agent, change.revision)
    status = eventually(lambda: fleet.status("web1")["state"] == "degraded" and fleet.status("web1"))
    assert "not staged" in status["error"]
    assert status["release"] == ""
    assert agent.current() is None
    other = fleet.store.data_set("k", "1")  # the agent keeps applying data meanwhile
    fleet.wait_revision(agent, other.revision)
    fleet.wait_data(agent, {"k": 1})
    stage(agent.root, build)
    eventually(lambda: agent.current() == release, what="switched on a reconcile")
    status = eventually(lambda: fleet.status("web1")["state"] == "ready" and fleet.status("web1"))
    assert status["error"] == "" and status["release"] == release


def test_agent_in_a_namespace_never_touches_another(fleet):
    fleet.admin.set("other:secret", "x")
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", "1")
    fleet.wait_revision(agent, change.revision)
    assert fleet.admin.keys(f"{NAMESPACE}:host:*") == [f"{NAMESPACE}:host:web1"]
    assert "NOPERM" not in agent.log()
