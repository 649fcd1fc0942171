"""The browser client, sync_agent/host/static/frontfleet.js, run by node against a real agent's stream (one tab
with its own stream; the shared worker and the tabs' leader are for the Chromium tests): its callbacks see each
change, a switch, and what happened while its agent restarted."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from sync_agent.host.shared_data import CLIENT_SOURCE

from .conftest import eventually, stage

pytestmark = pytest.mark.integration

HARNESS = Path(__file__).with_name("live_client_harness.mjs")
NODE = shutil.which("node")


class Page:
    """node running the client; lines() are its callbacks' calls, in order."""

    def __init__(self, socket_path: Path, page_release: str = "", mode: str = "tab") -> None:
        if NODE is None:  # never a skip: `make test` installs it (system-deps)
            pytest.fail("node is not installed: apt-get install nodejs (or run `make test`, which does)")
        env = {**os.environ, "LIVE_SOCKET": str(socket_path), "CLIENT": CLIENT_SOURCE.as_uri(),
               "PAGE_RELEASE": page_release, "MODE": mode}
        self.process = subprocess.Popen([NODE, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def until(self, wanted: dict[str, Any], timeout: float = 10.0) -> list[dict[str, Any]]:
        """The calls up to and with one equal to wanted."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"the client never called back with {wanted}; it did: {seen}")
            try:
                call = json.loads(line)
            except ValueError:
                pytest.fail(f"node said: {line}")
            seen.append(call)
            if call == wanted:
                return seen

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def test_the_client_keeps_a_live_copy_resumes_across_an_agent_restart_and_reports_a_switch(fleet, builds, live):
    agent = live.agent("web1", start=False)
    one, two = stage(agent.root, builds("one")), stage(agent.root, builds("two"))
    fleet.store.activate(one, {"label": "first"})
    fleet.store.data_set("banner", '{"text": "hello"}')
    agent.start()
    live.stream("web1").close()  # the socket is there and serving
    page = Page(live.socket("web1"), one)
    try:
        page.until({"banner": {"text": "hello"}})
        fleet.store.data_set("banner", '{"text": "changed"}')
        page.until({"banner": {"text": "changed"}})
        agent.stop()  # the page keeps its data; its stream reconnects until the agent is back
        fleet.store.data_set("other", "1")
        fleet.store.data_del("banner")
        agent.start()
        calls = page.until({"keys": ["other"]}, timeout=20)  # resumed from the store's log: the keys changed since
        assert {"banner": None} in calls
        change = fleet.store.activate(two, {"label": "second"})
        calls = page.until({"release": {"id": two, "label": "second"}, "before": {"id": one, "label": "first"}})
        fleet.wait_revision(agent, change.revision)
        assert not [c for c in calls if "release" in c and c["release"]["id"] == one]
    finally:
        page.stop()


def test_two_tabs_share_one_stream_and_the_next_tab_resumes_it_when_the_leader_goes(fleet, live):
    agent = live.agent("web1")
    first = fleet.store.data_set("banner", '"one"')
    fleet.wait_revision(agent, first.revision)
    live.stream("web1").close()
    tabs = Page(live.socket("web1"), mode="tabs")
    try:
        calls = tabs.until({"tab": 2, "banner": "one"})
        assert {"tab": 1, "banner": "one"} in calls
        assert [c for c in calls if "opened" in c] == [{"opened": ""}]  # one stream for both tabs
        second = fleet.store.data_set("banner", '"two"')
        calls = tabs.until({"tab": 2, "banner": "two"})
        tabs.tell("handover")  # the leader's tab closes: the other one takes the lock and the stream
        tabs.until({"opened": f"?last_event_id={second.epoch}%3A{second.revision}%3A{second.id}"})
        eventually(lambda: f"with ring: from the ring after revision {second.revision}" in agent.log(),
                   what="the stream resumed from the ring, not a snapshot")
        fleet.store.data_set("banner", '"three"')
        tabs.until({"tab": 2, "banner": "three"})
    finally:
        tabs.stop()
