"""The live stream's fan-out: a child process of the agent that holds every open stream and writes each change to
all of them, so the pages never share the agent's event loop (and its apply path) with their writes.

The agent keeps what needs its state: it accepts a connection, reads the request, works out the resume or the
snapshot (hub.py), then hands the connected socket over (SCM_RIGHTS) with the bytes that stream starts with. From
then on this process alone writes to it: each change the agent applies arrives once over the feed and is sent to
every stream with one non-blocking `send`; a stream that cannot take it keeps its own unsent bytes, and past
`client_buffer` of them it has fallen behind and is closed (the browser reconnects with its Last-Event-ID and
resumes from the agent). Order needs no bookkeeping: the agent writes changes and hand-overs to one feed in the
order it made them, so a stream handed over after change N gets exactly the changes after N.

The feed (a unix stream socketpair; the agent's end in feed.py) carries records `<kind:1><length:4><body>`:
`F` frames for every stream, `C` a new stream's first bytes, its socket passed with the record's header. Back to
the agent: `<closed:4>`, streams that ended since the last report. EOF on the feed ends this process and every
stream (the agent is stopping). Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import array
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque

RECORD = struct.Struct("!cI")  # kind, body length
CLOSED = struct.Struct("!I")
FRAMES, CLIENT = b"F", b"C"
PING = b": ping\n\n"
FEED_READ = 256 * 1024
FDS_PER_READ = 64  # sockets one recvmsg may carry (the kernel stops a read at each record that carries one)

log = logging.getLogger("sync_agent.host.live.fanout")


class Stream:
    """One open stream: its socket and the bytes it could not take yet (None while it keeps up)."""

    __slots__ = ("limit", "sock", "unsent")

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.unsent: bytearray | None = None
        self.limit = limit


class Fanout:
    """The streams, and the loop that feeds them."""

    def __init__(self, feed: socket.socket, client_buffer: int, heartbeat: float) -> None:
        self.feed = feed
        self.client_buffer = client_buffer
        self.heartbeat = heartbeat
        self.selector = selectors.DefaultSelector()
        self.streams: dict[int, Stream] = {}
        self.closed = 0  # streams ended since the last report to the agent
        self._inbox = bytearray()
        self._fds: deque[int | None] = deque()  # sockets received, in the order of their records
        self._feed_open = True
        feed.setblocking(False)
        self.selector.register(feed, selectors.EVENT_READ, None)

    def run(self) -> None:
        next_ping = time.monotonic() + self.heartbeat
        while self._feed_open:
            for key, mask in self.selector.select(max(0.0, next_ping - time.monotonic())):
                if key.data is None:
                    self._read_feed()
                    continue
                if mask & selectors.EVENT_READ:
                    self._read_stream(key.data)
                if mask & selectors.EVENT_WRITE:
                    self._flush(key.data)
            if time.monotonic() >= next_ping:
                self.broadcast(PING)
                next_ping = time.monotonic() + self.heartbeat
            self._report()
        for stream in list(self.streams.values()):
            self._close(stream)

    # --- the feed -------------------------------------------------------------------------------------

    def _read_feed(self) -> None:
        """Take what the agent sent; every change it holds goes out in one write per stream."""
        while True:
            try:
                data, ancillary, flags, _ = self.feed.recvmsg(FEED_READ, socket.CMSG_SPACE(FDS_PER_READ * 4))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.error("cannot read the agent's feed: %s", err)
                data, ancillary = b"", []
            got = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
                    got += len(fds)
            if flags & socket.MSG_CTRUNC and not got:  # the kernel dropped the one socket of this read (no
                self._fds.append(None)  # free file here): its record is skipped, the next keeps its own
            if not data:
                self._feed_open = False
                return
            self._inbox += data
        frames: list[bytes] = []
        inbox, offset = self._inbox, 0
        while len(inbox) - offset >= RECORD.size:
            kind, length = RECORD.unpack_from(inbox, offset)
            end = offset + RECORD.size + length
            if end > len(inbox):
                break
            body = bytes(inbox[offset + RECORD.size:end])
            offset = end
            if kind == FRAMES:
                frames.append(body)
            elif kind == CLIENT:
                if frames:  # what came before this stream was handed over is not its to get
                    self.broadcast(b"".join(frames))
                    frames.clear()
                self._adopt(body)
        del inbox[:offset]
        if frames:
            self.broadcast(b"".join(frames))

    def _adopt(self, first: bytes) -> None:
        fd = self._fds.popleft() if self._fds else None  # it came with the record's first byte, or was dropped
        if fd is None:
            log.error("a live stream was handed over without its socket (out of files?); the page reconnects")
            self.closed += 1  # the agent counted it
            return
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        stream = Stream(sock, self.client_buffer + len(first))  # a large snapshot is not falling behind
        self.streams[sock.fileno()] = stream
        self.selector.register(sock, selectors.EVENT_READ, stream)
        self._send(stream, first)

    def _report(self) -> None:
        if self.closed:
            try:
                self.feed.send(CLOSED.pack(self.closed))
            except (BlockingIOError, InterruptedError):
                return  # the agent reads it later: the count only grows meanwhile
            except OSError:
                self._feed_open = False
                return
            self.closed = 0

    # --- the streams ----------------------------------------------------------------------------------

    def broadcast(self, payload: bytes) -> None:
        for stream in list(self.streams.values()):
            self._send(stream, payload)

    def _send(self, stream: Stream, payload: bytes) -> None:
        if stream.unsent is not None:
            if len(stream.unsent) + len(payload) > stream.limit:
                log.info("dropped a live client that fell behind (%d bytes unsent); it resumes when it reconnects",
                         len(stream.unsent))
                self._close(stream)
            else:
                stream.unsent += payload
            return
        try:
            sent = stream.sock.send(payload)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(stream)
            return
        if sent < len(payload):
            stream.unsent = bytearray(payload[sent:])
            self.selector.modify(stream.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, stream)

    def _flush(self, stream: Stream) -> None:
        if stream.unsent is None or stream.sock.fileno() < 0:  # caught up already, or closed by the read
            return
        try:
            sent = stream.sock.send(stream.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(stream)
            return
        del stream.unsent[:sent]
        if not stream.unsent:
            stream.unsent = None
            self.selector.modify(stream.sock, selectors.EVENT_READ, stream)

    def _read_stream(self, stream: Stream) -> None:
        """A page sends nothing after its request: readable means it went away (or sent what is ignored)."""
        try:
            if stream.sock.recv(4096):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(stream)

    def _close(self, stream: Stream) -> None:
        fd = stream.sock.fileno()
        if self.streams.pop(fd, None) is None:
            return
        self.selector.unregister(stream.sock)
        stream.sock.close()
        self.closed += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync_agent.host.live.fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--feed-fd", type=int, required=True, help="the agent's end of the feed is this fd's peer")
    parser.add_argument("--client-buffer", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(stream=sys.stdout, level=args.log_level.upper(),
                        format=f"{stamp}%(levelname)s %(name)s: %(message)s")
    # systemd's stop signals every process of the unit, ^C the whole foreground group: this one ends when the agent,
    # stopping, closes the feed (or dies: the kernel closes it then), never before the agent.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    feed = socket.socket(fileno=args.feed_fd)
    Fanout(feed, args.client_buffer, args.heartbeat).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
