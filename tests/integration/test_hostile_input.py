"""Hostile input and failed writes against real agent processes (issue "Hostile input never takes an agent down").

Each input is written straight into Redis with full rights, around the publisher's checks, as a broken tool or an
attacker with the publisher's credential would. After each one the agent is the same process, its status names
the problem, and the next valid change applies.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sync_agent.errors import EXIT_USAGE
from sync_agent.protocol import MAX_DATA_BYTES, MAX_DATA_KEYS, MAX_DEPTH
from tests.integration.conftest import KEYS, eventually
from tests.servers import new_store

pytestmark = pytest.mark.integration

SYNC_AGENT = str(Path(sys.executable).with_name("sync-agent"))
DEEP = "[" * 990 + "]" * 990


def _alive(agent) -> bool:
    return agent.process is not None and agent.process.poll() is None


def _status_says(fleet, host: str, text: str) -> dict[str, str]:
    return eventually(lambda: text in fleet.status(host).get("error", "") and fleet.status(host),
                      what=f"{host}'s status error mentions {text!r}")


@pytest.mark.parametrize(("name", "raw_value", "said"), [
    ("990 levels deep", DEEP, "nested deeper than"),
    ("NaN", "NaN", "NaN is not a finite number"),
    ("1e999", "1e999", "not a finite number"),
    ("not UTF-8", b'"\xff\xfe"', "utf-8"),
])
def test_a_bad_value_in_the_snapshot_is_skipped_and_every_other_key_applies(fleet, name, raw_value, said):
    fleet.store.data_set("good", '"kept"')
    fleet.admin.hset(KEYS.data, "bad", raw_value)
    agent = fleet.agent("web1")
    status = _status_says(fleet, "web1", "bad")
    assert status["state"] == "degraded"
    fleet.wait_data(agent, {"good": "kept"})
    assert said in agent.log()
    fleet.admin.hdel(KEYS.data, "bad")
    change = fleet.store.data_set("next", "1")
    fleet.wait_revision(agent, change.revision)
    agent.stop()
    agent.start()  # a restart reads the snapshot again, now without the bad key: ready
    eventually(lambda: fleet.status("web1")["state"] == "ready" and fleet.status("web1")["error"] == "",
               what="ready again once the bad key is gone")
    fleet.wait_data(agent, {"good": "kept", "next": 1})
    assert _alive(agent)


def test_a_field_name_that_is_not_utf8_is_skipped(fleet):
    fleet.store.data_set("good", "1")
    fleet.admin.hset(KEYS.data, b"\xff\xfebad", "2")
    agent = fleet.agent("web1")
    _status_says(fleet, "web1", "\\xff\\xfebad")
    fleet.wait_data(agent, {"good": 1})
    change = fleet.store.data_set("good", "3")
    fleet.wait_revision(agent, change.revision)
    fleet.wait_data(agent, {"good": 3})
    assert _alive(agent)


def test_a_990_deep_value_in_an_event_is_skipped_and_the_next_change_applies(fleet):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", "0")
    fleet.wait_revision(agent, change.revision)
    event = json.dumps({"v": 1, "type": "data", "epoch": change.epoch, "rev": change.revision + 1, "op": "set",
                        "key": "k", "value": 0}).replace('"value": 0', f'"value": {DEEP}')
    fleet.admin.publish(KEYS.events, event)
    _status_says(fleet, "web1", "nested deeper than")
    change = fleet.store.data_set("k", "1")
    fleet.wait_data(agent, {"k": 1})
    fleet.wait_revision(agent, change.revision)
    assert _alive(agent)


def test_a_revision_that_is_not_an_integer_refuses_the_snapshot_and_keeps_what_is_served(fleet):
    agent = fleet.agent("web1", templates={"env.js.j2": "window.k = {{ data.get('k') | tojson }};\n"})
    change = fleet.store.data_set("k", '"before"')
    fleet.wait_revision(agent, change.revision)
    eventually(lambda: (agent.shared / "env.js").read_text() == 'window.k = "before";\n', what="env.js rendered")
    pid = fleet.status("web1")["pid"]
    fleet.admin.set(KEYS.revision, "not-a-number")
    agent.stop()
    agent.start()
    status = _status_says(fleet, "web1", "snapshot refused")
    assert status["state"] == "degraded"
    assert agent.data() == {"k": "before"}  # what it served stays, data.json and the rendered files alike
    assert (agent.shared / "env.js").read_text() == 'window.k = "before";\n'
    fleet.admin.publish(KEYS.events, json.dumps({"v": 1, "type": "data", "epoch": "forged", "rev": 1, "op": "set",
                                                 "key": "k", "value": "forged"}))  # a resync, refused again
    eventually(lambda: int(fleet.status("web1")["resyncs"]) >= 1, what="the forged event read the snapshot")
    assert agent.data() == {"k": "before"}
    assert (agent.shared / "env.js").read_text() == 'window.k = "before";\n'
    fleet.admin.set(KEYS.revision, str(change.revision))  # repaired
    change = fleet.store.data_set("k", '"after"')
    fleet.wait_data(agent, {"k": "after"})
    eventually(lambda: fleet.status("web1")["state"] == "ready", what="ready once the store can be read")
    assert _alive(agent) and fleet.status("web1")["pid"] != pid  # the restart above; no crash since


def test_forged_events_cost_at_most_one_snapshot_read_per_batch(fleet):
    agent = fleet.agent("web1")
    change = fleet.store.data_set("k", "0")
    before = fleet.wait_revision(agent, change.revision)
    pipe = fleet.admin.pipeline(transaction=False)
    for n in range(3000):
        forged = ({"epoch": f"forged{n}", "rev": 1} if n % 2 else {"epoch": change.epoch, "rev": 10_000 + n})
        pipe.publish(KEYS.events, json.dumps({"v": 1, "type": "data", "op": "set", "key": "k", "value": -1,
                                              **forged}))
    pipe.execute()
    last = fleet.store.data_set("k", "42")
    fleet.wait_data(agent, {"k": 42})
    after = fleet.wait_revision(agent, last.revision)
    batches = int(after["batches"]) - int(before["batches"])
    resyncs = int(after["resyncs"]) - int(before["resyncs"])
    assert 1 <= resyncs <= batches < 3000, (resyncs, batches)
    assert _alive(agent)


def test_a_write_the_filesystem_refuses_is_degraded_unacknowledged_and_retried(fleet, tmp_path):
    agent = fleet.agent("web1", start=False)
    agent.shared.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(agent.shared)], check=True)
    try:
        agent.start()
        first = fleet.store.data_set("k", '"small"')
        fleet.wait_revision(agent, first.revision)
        filler = agent.shared / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=1000"], capture_output=True)
        change = fleet.store.data_set("k", json.dumps("x" * 100_000))
        status = _status_says(fleet, "web1", "cannot write")
        assert status["state"] == "degraded" and "No space left on device" in status["error"]
        assert int(status["revision"]) == first.revision  # the failed write is not acknowledged
        assert agent.data() == {"k": "small"}
        filler.unlink()
        fleet.wait_revision(agent, change.revision)
        eventually(lambda: fleet.status("web1")["state"] == "ready", what="ready once the write landed")
        assert agent.data() == {"k": "x" * 100_000}
        assert _alive(agent)
    finally:
        agent.stop()
        subprocess.run(["umount", "-l", str(agent.shared)], check=False)


# --- the publisher refuses what agents could not serve ------------------------------------------------------

@pytest.mark.parametrize(("value", "said"), [
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
    (DEEP, "nested deeper than"),
    ("NaN", "NaN is not a finite number"),
    ('{"a": Infinity}', "Infinity is not a finite number"),
    ("1e999", "not a finite number"),
    ("9" * 400, "not a finite number"),
])
def test_sync_agent_data_set_refuses_what_agents_could_not_serve(publisher_env, value, said):
    result = subprocess.run([SYNC_AGENT, "data", "set", "k", value], env=publisher_env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == EXIT_USAGE, result
    assert said in result.stderr and "Traceback" not in result.stderr
    listed = subprocess.run([SYNC_AGENT, "data", "list", "--json"], env=publisher_env, capture_output=True,
                            text=True, timeout=30)
    assert json.loads(listed.stdout) == {}


def test_the_key_count_cap_holds_against_racing_publishers(fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    pipe = fresh_redis.client().pipeline(transaction=False)
    for n in range(MAX_DATA_KEYS - 10):
        store.data_set(f"k{n}", "1") if n < 2 else pipe.hset(KEYS.data, f"k{n}", "1")
    pipe.execute()
    refused: list[str] = []

    def publish(worker: int) -> None:
        own = new_store(fresh_redis.client(), "ff")
        for n in range(10):
            try:
                own.data_set(f"w{worker}-{n}", "1")
            except Exception as err:
                refused.append(str(err))

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fresh_redis.client().hlen(KEYS.data) == MAX_DATA_KEYS
    assert len(refused) == 30 and all("MAX_DATA_KEYS" in why for why in refused)


def test_the_total_size_cap_refuses_with_exit_2(publisher_env, fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    big = json.dumps("x" * (500 * 1024))
    for n in range(MAX_DATA_BYTES // (500 * 1024)):
        store.data_set(f"big{n}", big)
    store.data_set("rest", json.dumps("z" * (MAX_DATA_BYTES % (500 * 1024) - 50 * 1024)))  # 50 KiB left
    extra = json.dumps("y" * (100 * 1024))  # fits on a command line (one argument is at most 128 KiB)
    result = subprocess.run([SYNC_AGENT, "data", "set", "one-more", extra], env=publisher_env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == EXIT_USAGE and "MAX_DATA_BYTES" in result.stderr, result
    assert fresh_redis.client().hget(KEYS.data, "one-more") is None
    store.data_set("big0", '"small"')  # shrinking a key is always allowed, and makes room
    result = subprocess.run([SYNC_AGENT, "data", "set", "one-more", extra], env=publisher_env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result


async def test_an_unexpected_error_ends_the_session_not_the_process(fleet, monkeypatch):
    """A fault injected into the agent's own code (no input today reaches one): the session ends, the agent
    reconnects with backoff, reports `degraded` with the cause, and the change it failed on still lands."""
    import asyncio

    from sync_agent.host.agent import Agent as AgentProcess
    from sync_agent.host.config import load_config

    fleet.store.data_set("k", '"before"')
    handle = fleet.agent("web1", start=False)
    agent = AgentProcess(load_config(str(handle.config)))
    original = AgentProcess._apply_message
    calls = {"n": 0}

    def fails_once(self, message, batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return original(self, message, batch)

    monkeypatch.setattr(AgentProcess, "_apply_message", fails_once)
    running = asyncio.create_task(agent.run())

    async def until(check, what: str) -> None:
        for _ in range(500):
            if check():
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"not true after 10s: {what}; status {fleet.status('web1')}")

    await until(lambda: fleet.status("web1").get("state") == "ready", "ready")
    change = fleet.store.data_set("k", '"v"')
    await until(lambda: "injected fault" in fleet.status("web1").get("error", ""), "the cause in the status")
    assert fleet.status("web1")["state"] == "degraded"
    await until(lambda: fleet.status("web1").get("revision") == change.revision, "the change landed")
    assert json.loads((handle.shared / "data.json").read_text()) == {"k": "v"}
    assert not running.done()
    agent.should_exit.set()
    assert await asyncio.wait_for(running, 5) == 0
