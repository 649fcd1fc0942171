"""The live stream against real Redis and real agents: what a page reads from /_sync/events over the agent's unix
socket, as nginx would pass it on."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import KEYS, Agent, Fleet, eventually, stage
from .sse_client import Event, Stream

pytestmark = pytest.mark.integration


class Live:
    """Agents with the live stream on, each on its own socket, and the streams the test opened (closed after it)."""

    def __init__(self, fleet: Fleet, folder: Path) -> None:
        self.fleet = fleet
        self.folder = folder
        self.streams: list[Stream] = []

    def socket(self, host: str) -> Path:
        return self.folder / f"{host}.sock"

    def agent(self, host: str, start: bool = True, **live: Any) -> Agent:
        return self.fleet.agent(host, start=start, extra={"live": {"socket": str(self.socket(host)), **live}})

    def stream(self, host: str, last_event_id: str | None = None, **options: Any) -> Stream:
        path = self.socket(host)
        eventually(path.exists, what=f"{path} is there")
        page = Stream(path, last_event_id, **options)
        self.streams.append(page)
        return page.open()


@pytest.fixture
def live(fleet: Fleet) -> Iterator[Live]:
    """A short folder for the sockets (a unix socket path holds at most 107 bytes; pytest's tmp_path is long)."""
    folder = Path(tempfile.mkdtemp(prefix="ff-live-", dir="/tmp"))
    helper = Live(fleet, folder)
    try:
        yield helper
    finally:
        for page in helper.streams:
            page.close()
        shutil.rmtree(folder, ignore_errors=True)


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
