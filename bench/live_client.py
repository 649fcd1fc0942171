"""A lean load generator for the live stream: N streams on the agent's unix socket, in one process on one core.

`python -m bench.live_client SOCKET STREAMS CPU REDIS_URL NAMESPACE OUT` opens STREAMS connections (raw
non-blocking sockets, one `selectors` loop), sends each a `GET /_sync/events`, and reads them for good, parsing
only the `id:` lines (`<epoch>:<revision>:<change>`). It prints `ready SECONDS RSS` once every stream has its
snapshot, then takes commands on stdin:

* `changes COUNT GAP TIMEOUT`: COUNT times, publish one data change through the store's script (as `fab data-set`)
  and note CLOCK_MONOTONIC just before the call; every stream's receipt of a revision at least the published one is
  timed against it; the next change goes GAP seconds after every stream had it (or TIMEOUT passed). Writes OUT:
  {"changes": [{"latencies_ms": [...], "missing": n}], "cpu_s": ..., "wall_s": ...} and prints `done`.
* `quit`: close everything and exit.

Between commands it keeps reading (the streams are never left unread: the agent would drop them). An asyncio
client costs ~10x the CPU per stream and was itself the bottleneck (p99 0.8 s at 5,000): this is why it is raw.
"""

from __future__ import annotations

import json
import os
import re
import resource
import selectors
import socket
import sys
import time
from pathlib import Path

import redis

REQUEST = b"GET /_sync/events HTTP/1.1\r\nHost: bench\r\n\r\n"
ID_LINE = re.compile(rb"^id: [^:\n]*:(\d+):", re.MULTILINE)
CONNECT_TIMEOUT = 300.0  # seconds for every stream to open and get its snapshot
RECV = 65536


class Streams:
    """The open streams: the highest revision each has read, and when it first read one at least `target`."""

    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.tails: list[bytes] = []
        self.revision: list[int] = []
        self.target = -1
        self.got_at: list[int] = []
        self.waiting = 0  # streams that have not read `target` yet
        self.closed: set[int] = set()  # streams the agent closed

    def open_all(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while len(self.socks) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.socks)} of {self.count} streams opened in {CONNECT_TIMEOUT}s")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(self.path)
            except (BlockingIOError, InterruptedError):  # the backlog is full: read a little, then try again
                sock.close()
                self.poll(0.001)
                continue
            sock.send(REQUEST)
            index = len(self.socks)
            self.socks.append(sock)
            self.tails.append(b"")
            self.revision.append(-1)
            self.got_at.append(0)
            self.selector.register(sock, selectors.EVENT_READ, index)
            if index % 64 == 63:
                self.poll(0)
        while min(self.revision) < 0:
            if time.monotonic() > deadline:
                waiting = sum(1 for r in self.revision if r < 0)
                raise RuntimeError(f"{waiting} streams got no snapshot in {CONNECT_TIMEOUT}s")
            self.poll(0.05)

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                continue
            self.read(key.data)

    def read(self, index: int) -> None:
        try:
            data = self.socks[index].recv(RECV)
        except BlockingIOError:
            return
        now = time.monotonic_ns()
        if not data:  # the agent closed it (it fell behind): it counts as missing from here on
            self.selector.unregister(self.socks[index])
            self.closed.add(index)
            if self.target > 0 and not self.got_at[index]:
                self.waiting -= 1
            return
        buffer = self.tails[index] + data
        cut = buffer.rfind(b"\n") + 1
        self.tails[index] = buffer[cut:]
        highest = self.revision[index]
        for match in ID_LINE.finditer(buffer, 0, cut):
            highest = max(highest, int(match.group(1)))
        if highest > self.revision[index]:
            self.revision[index] = highest
            if highest >= self.target > 0 and not self.got_at[index]:
                self.got_at[index] = now
                self.waiting -= 1

    def expect(self, target: int) -> None:
        self.target = target
        self.got_at = [0] * len(self.socks)
        self.waiting = len(self.socks) - len(self.closed)

    def close(self) -> None:
        for index, sock in enumerate(self.socks):
            if index not in self.closed:
                self.selector.unregister(sock)
            sock.close()
        self.selector.close()


def changes(streams: Streams, store: object, count: int, gap: float, timeout: float) -> list[dict[str, object]]:
    from sync_agent.control.store import Store

    assert isinstance(store, Store)
    rows = []
    for seq in range(count):
        target = max(streams.revision) + 1
        streams.expect(target)
        published = time.monotonic_ns()
        store.data_set("bench-live", json.dumps({"seq": seq}))
        deadline = time.monotonic() + timeout
        while streams.waiting and time.monotonic() < deadline:
            streams.poll(0.05)
        latencies = [round((t - published) / 1e6, 3) for t in streams.got_at if t]
        rows.append({"revision": target, "latencies_ms": latencies, "missing": len(streams.socks) - len(latencies),
                     "closed": len(streams.closed)})
        pause = time.monotonic() + gap
        while time.monotonic() < pause:
            streams.poll(max(0.0, pause - time.monotonic()))
    return rows


def main() -> int:
    path, count, cpu, url, namespace, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
    os.sched_setaffinity(0, {cpu})
    from sync_agent.control.store import Store

    store = Store(redis.Redis.from_url(url), namespace)
    streams = Streams(path, count)
    started = time.monotonic()
    streams.open_all()
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    print(f"ready {time.monotonic() - started:.3f} {rss}", flush=True)
    streams.selector.register(sys.stdin, selectors.EVENT_READ, None)
    try:
        while True:
            events = streams.selector.select(1.0)
            line = None
            for key, _ in events:
                if key.data is None:
                    line = sys.stdin.readline()
                else:
                    streams.read(key.data)
            if line is None:
                continue
            words = line.split()
            if not words or words[0] == "quit":
                return 0
            if words[0] == "changes":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                begin = time.monotonic()
                rows = changes(streams, store, int(words[1]), float(words[2]), float(words[3]))
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu_s = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
                with open(out, "w") as handle:
                    json.dump({"changes": rows, "cpu_s": cpu_s, "wall_s": time.monotonic() - begin}, handle)
                print("done", flush=True)
    finally:
        streams.close()


if __name__ == "__main__":
    sys.exit(main())
