"""The live stream against real Redis and real agents: what a page reads from /_sync/events over the agent's unix
socket, as nginx would pass it on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from sync_agent.snapshot import Point

from .conftest import eventually, stage
from .sse_client import Event, Stream

pytestmark = pytest.mark.integration


def event_id(change: Any) -> str:
    return f"{change.epoch}:{change.revision}:{change.id}"


def data_events(events: list[Event]) -> list[tuple[str, str, Any]]:
    return [(e.body["op"], e.body["key"], e.body.get("value")) for e in events]


def test_a_stream_starts_with_the_snapshot_then_sends_each_change_in_order(fleet, builds, live):
    agent = live.agent("web1", start=False)
    release = stage(agent.root, builds("one"))
    fleet.store.activate(release, {"label": "v1"})
    change = fleet.store.data_set("banner", '{"text": "hi"}')
    agent.start()
    fleet.wait_revision(agent, change.revision)
    page = live.stream("web1")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/event-stream")
    assert page.headers["cache-control"] == "no-store" and page.headers["x-accel-buffering"] == "no"
    first = page.next()
    assert first.type == "snapshot" and first.id == event_id(change)
    assert first.body["data"] == {"banner": {"text": "hi"}}
    assert first.body["release"] == {"id": release, "label": "v1"}
    assert (first.body["epoch"], first.body["rev"], first.body["host"]) == (change.epoch, change.revision, "web1")
    changes = [fleet.store.data_set("a", "1"), fleet.store.data_del("banner"), fleet.store.data_set("a", "[2, 3]")]
    events = page.events(3)
    assert data_events(events) == [("set", "a", 1), ("del", "banner", None), ("set", "a", [2, 3])]
    assert [e.id for e in events] == [event_id(c) for c in changes]
    assert (agent.shared / "frontfleet.js").read_bytes().startswith(b"// frontfleet's live client")


def test_a_page_resumes_after_its_last_event_id_on_its_host_and_on_another(fleet, live):
    hosts = [live.agent("web1"), live.agent("web2")]
    seen = fleet.store.data_set("a", "1")
    for agent in hosts:
        fleet.wait_revision(agent, seen.revision)
    page = live.stream("web1")
    assert page.next().id == event_id(seen)
    page.close()  # the page loses its connection; the fleet goes on
    changes = [fleet.store.data_set("b", '"x"'), fleet.store.data_del("a"), fleet.store.data_set("b", '"y"')]
    for agent in hosts:
        fleet.wait_revision(agent, changes[-1].revision)
    resumed = [live.stream(host, event_id(seen)) for host in ("web1", "web2")]  # its host, or another one
    for again in resumed:
        events = again.events(4)
        assert data_events(events[:3]) == [("set", "b", "x"), ("del", "a", None), ("set", "b", "y")]
        assert [e.id for e in events[:3]] == [event_id(c) for c in changes]
        assert events[3].type == "release" and events[3].id == event_id(changes[-1])
        assert any(c.startswith("ring:") for c in again.comments), again.comments
    follow = fleet.store.data_set("c", "3")
    for again in resumed:
        assert again.next().id == event_id(follow)  # and it goes on live


def test_an_id_older_than_the_ring_resumes_from_the_stores_log_with_the_keys_changed_since(fleet, live):
    agent = live.agent("web1", ring=2)
    fleet.store.data_set("kept", '"same"')
    seen = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, seen.revision)
    fleet.store.data_set("a", "2")
    fleet.store.data_set("b", "true")
    fleet.store.data_set("gone", "0")
    fleet.store.data_del("gone")
    last = fleet.store.data_set("a", "3")
    fleet.wait_revision(agent, last.revision)
    page = live.stream("web1", event_id(seen))
    events = page.events(4)
    assert any(c.startswith("store:") for c in page.comments), page.comments
    assert data_events(events[:3]) == [("set", "a", 3), ("set", "b", True), ("del", "gone", None)]
    assert [e.id for e in events] == [None, None, event_id(last), event_id(last)]
    assert events[3].type == "release"

    agent.stop()  # a restarted agent has an empty ring: its pages come back with ids from before
    after = fleet.store.data_set("b", "false")
    agent.start()
    fleet.wait_revision(agent, after.revision)
    for page in [live.stream("web1", event_id(last)) for _ in range(2)]:  # every page of the host comes back
        events = page.events(2)
        assert data_events(events[:1]) == [("set", "b", False)] and events[0].id == event_id(after)
        assert any(c.startswith("store:") for c in page.comments), page.comments


def test_a_snapshot_for_an_id_of_another_epoch_unknown_or_older_than_the_store_remembers(fleet, live):
    agent = live.agent("web1", ring=4)
    first = fleet.store.data_set("n", "0")
    fleet.wait_revision(agent, first.revision)
    for last_event_id in (f"0123456789abcdef:{first.revision}:{first.id}", "not-an-id",
                          f"{first.epoch}:1:ffffffffffffffff"):
        page = live.stream("web1", last_event_id)
        snapshot = page.next()
        assert snapshot.type == "snapshot" and snapshot.body["data"] == {"n": 0}, last_event_id
        assert any(c.startswith("snapshot:") for c in page.comments)
    for n in range(1, 1030):  # past NS:log (1,024) and the record of changes (1,000)
        last = fleet.store.data_set("n", str(n))
    fleet.wait_revision(agent, last.revision, timeout=30)
    page = live.stream("web1", event_id(first))
    snapshot = page.next()
    assert snapshot.type == "snapshot" and snapshot.body["data"] == {"n": 1029} and snapshot.id == event_id(last)
    assert any("does not reach back" in c or "log does not hold" in c for c in page.comments), page.comments


def test_a_release_event_when_the_host_switches(fleet, builds, live):
    agent = live.agent("web1", start=False)
    one, two = stage(agent.root, builds("one")), stage(agent.root, builds("two"))
    fleet.store.activate(one, {"label": "first"})
    agent.start()
    page = live.stream("web1")
    assert page.next().body["release"] == {"id": one, "label": "first"}
    change = fleet.store.activate(two, {"label": "second"})
    event = page.next()
    assert event.type == "release" and event.id == event_id(change)
    assert event.body["release"] == {"id": two, "label": "second"} and event.body["rev"] == change.revision
    assert agent.current() == two


def test_a_page_that_stops_reading_is_dropped_and_delays_neither_the_agent_nor_the_others(fleet, live):
    agent = live.agent("web1", client_buffer=65536)
    start = fleet.store.data_set("big", '""')
    fleet.wait_revision(agent, start.revision)
    stalled = live.stream("web1", receive_buffer=4096)
    stalled.next()  # its snapshot; then it reads nothing more
    readers = [live.stream("web1") for _ in range(3)]
    got: dict[int, list[Event]] = {i: [] for i in range(len(readers))}

    def read(index: int, page: Stream) -> None:
        page.next()
        while len(got[index]) < 40:
            got[index].append(page.next(timeout=20))

    threads = [threading.Thread(target=read, args=(i, page), daemon=True) for i, page in enumerate(readers)]
    for thread in threads:
        thread.start()
    value = '"' + "x" * 60_000 + '"'
    for n in range(40):
        last = fleet.store.data_set("big", value[:-1] + str(n) + '"')
    status = fleet.wait_revision(agent, last.revision, timeout=20)
    for thread in threads:
        thread.join(timeout=20)
    assert all(len(events) == 40 and events[-1].id == event_id(last) for events in got.values())
    assert status["state"] == "ready"
    eventually(lambda: "dropped a live client that fell behind" in agent.log(), what="the stalled page dropped")
    with pytest.raises((EOFError, ConnectionResetError)):  # what it had buffered, then the end of the stream
        while True:
            stalled.next(timeout=5)


def test_the_connection_limit_refuses_one_more_stream_with_503(fleet, live):
    agent = live.agent("web1", max_clients=2)
    change = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, change.revision)
    pages = [live.stream("web1"), live.stream("web1")]
    for page in pages:
        assert page.status == 200 and page.next().type == "snapshot"
    refused = live.stream("web1")
    assert refused.status == 503 and refused.headers.get("retry-after") and b"too many" in refused.body
    pages[0].close()

    def another() -> bool:
        page = live.stream("web1")
        return page.status == 200 and page.next().type == "snapshot"

    eventually(another, what="a stream once a place is free")


def test_the_listener_serves_only_the_stream_and_says_why(fleet, live):
    agent = live.agent("web1")
    change = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, change.revision)
    path = live.socket("web1")
    for request, status in ((b"GET /other HTTP/1.1\r\n\r\n", b"404"), (b"POST /_sync/events HTTP/1.1\r\n\r\n", b"405"),
                            (b"nonsense\r\n\r\n", b"400")):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(path))
            conn.sendall(request)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        assert reply.split(b" ")[1] == status, reply


def test_the_agent_serves_on_a_socket_that_systemd_passes_it(fleet, live):
    activate = shutil.which("systemd-socket-activate")
    if activate is None:  # never a skip: systemd comes with systemd-container, which `make test` installs
        pytest.fail("systemd-socket-activate is not installed: apt-get install systemd (or run `make test`)")
    agent = live.agent("web1", start=False)
    change = fleet.store.data_set("a", "1")
    path = live.socket("web1")
    agent.start(prefix=(activate, "--listen", str(path)))  # listens, and execs the agent at the first connection
    page = live.stream("web1")
    assert page.next().body["data"] == {"a": 1}
    fleet.wait_revision(agent, change.revision)
    assert "from systemd" in agent.log()
    assert agent.stop() == 0
    assert path.exists()  # the socket unit's, not the agent's to remove


def test_a_page_that_comes_from_a_host_further_on_waits_for_this_host_to_get_there(fleet, live, proxy):
    ahead, behind = live.agent("web1"), live.agent("web2", port=proxy.port)
    seen = fleet.store.data_set("a", "1")
    for agent in (ahead, behind):
        fleet.wait_revision(agent, seen.revision)
    proxy.freeze()  # web2's subscription stops; its probe notices within a second and it reconnects
    change = fleet.store.data_set("a", "2")
    fleet.wait_revision(ahead, change.revision)
    assert int(fleet.status("web2")["revision"]) < change.revision
    page = live.stream("web2", event_id(change))  # the page read the change on web1, then moved to web2
    first = page.next()
    assert first.type == "release" and first.id == event_id(change)  # nothing it has again, no snapshot
    assert any(c.startswith("ring:") and "once this host reached" in c for c in page.comments), page.comments
    follow = fleet.store.data_set("b", "3")
    assert page.next().id == event_id(follow)


def test_idle_streams_get_a_ping_comment_every_heartbeat(fleet, live):
    agent = live.agent("web1", heartbeat=0.2)
    fleet.wait_revision(agent, fleet.store.data_set("a", "1").revision)
    page = live.stream("web1")
    page.next()
    eventually(lambda: page.read_comments() and "ping" in page.comments, timeout=5, what="a ping")


def test_open_pages_get_a_snapshot_when_the_host_follows_a_recovered_store(fleet, live, fresh_redis):
    agent = live.agent("web1")
    old = fleet.store.data_set("old", "1")
    fleet.wait_revision(agent, old.revision)
    page = live.stream("web1")
    assert page.next().body["data"] == {"old": 1}
    fresh_redis.restart(kill=True)  # Redis lost everything; fab recover rebuilds the store from the hosts
    fleet.recreate_users()
    applied = Point.from_json(json.loads((agent.shared / "applied.json").read_text()))
    recovered = fleet.store.seed("recover", applied, {"old": "1", "new": "2"}, replace=True)
    event = page.next(timeout=20)
    assert event.type == "snapshot" and event.body["data"] == {"old": 1, "new": 2}
    assert event.body["epoch"] == recovered.epoch != old.epoch and event.id == event_id(recovered)
    again = live.stream("web1", event_id(old))  # a page that comes back with an id of the epoch before
    assert again.next().type == "snapshot" and any("epoch" in c for c in again.comments), again.comments


def test_a_request_head_too_large_is_refused(fleet, live):
    agent = live.agent("web1")
    fleet.wait_revision(agent, fleet.store.data_set("a", "1").revision)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(live.socket("web1")))
        conn.sendall(b"GET /_sync/events HTTP/1.1\r\nX-Big: " + b"x" * 10_000 + b"\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_an_agent_whose_live_socket_cannot_open_runs_without_it(fleet, live):
    agent = fleet.agent("web1", extra={"live": {"socket": str(live.folder / "missing" / "web1.sock")}})
    change = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, change.revision)
    fleet.wait_data(agent, {"a": 1})
    assert "cannot open the live stream" in agent.log() and "running without it" in agent.log()


def fanout_pid(agent: Any) -> int | None:
    """The agent's fan-out process (its one child that runs sync_agent.host.live.fanout), if it has one now."""
    pid = agent.process.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"sync_agent.host.live.fanout" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_streams_live_in_the_fanout_process_which_comes_back_when_it_dies(fleet, live):
    agent = live.agent("web1")
    seen = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, seen.revision)
    before = open_files(agent.process.pid)
    pages = [live.stream("web1") for _ in range(40)]
    for page in pages:
        assert page.next().id == event_id(seen)
    fanout = fanout_pid(agent)
    assert fanout is not None and open_files(fanout) >= 40
    assert open_files(agent.process.pid) <= before + 2  # the agent keeps no file per stream
    changed = fleet.store.data_set("a", "2")
    assert all(page.next().id == event_id(changed) for page in pages)

    os.kill(fanout, signal.SIGKILL)
    for page in pages:  # every stream ends; the browser reconnects with its last id
        with pytest.raises((EOFError, ConnectionResetError)):
            page.next(timeout=5)
    missed = fleet.store.data_set("a", "3")
    status = fleet.wait_revision(agent, missed.revision)  # the agent applied it meanwhile, and is ready
    assert status["state"] == "ready"
    eventually(lambda: fanout_pid(agent) not in (None, fanout), what="a new fan-out process")

    def resumed() -> Stream | None:
        page = live.stream("web1", event_id(changed))
        return page if page.status == 200 else None  # 503 + Retry-After while the new one starts

    page = eventually(resumed, what="a stream from the new fan-out")
    events = page.events(2)
    assert data_events(events[:1]) == [("set", "a", 3)] and events[0].id == event_id(missed)
    assert "the live fan-out ended" in agent.log() and "resume" in agent.log()
    after = fleet.store.data_set("a", "4")
    assert page.next().id == event_id(after)


def test_pages_past_the_fanouts_file_limit_are_ended_and_the_others_go_on(fleet, live):
    agent = live.agent("web1", start=False)
    agent.start(prefix=("prlimit", "--nofile=64:64", "--"))  # the agent and its fan-out: 64 files each
    seen = fleet.store.data_set("a", "1")
    fleet.wait_revision(agent, seen.revision)
    ended, kept = 0, []
    for _ in range(70):  # more pages than the fan-out has files for
        try:
            page = live.stream("web1")
            if page.status == 200 and page.next(timeout=5).id == event_id(seen):
                kept.append(page)
                continue
        except (EOFError, ConnectionResetError):  # ended before or after its status line
            pass
        ended += 1
    assert ended and kept, (ended, len(kept))
    assert "without its socket" in agent.log()
    changed = fleet.store.data_set("a", "2")
    assert fleet.wait_revision(agent, changed.revision)["state"] == "ready"
    assert all(page.next().id == event_id(changed) for page in kept)  # each held stream goes on, in order
    for page in kept:
        page.close()

    def another() -> bool:  # the ended pages were not counted as open: a page gets a stream again
        page = live.stream("web1")
        return page.status == 200 and page.next().id == event_id(changed)

    eventually(another, what="a stream once the pages closed")
