"""The agent's end of the fan-out process (fanout.py): starts it, feeds it each change once, hands it each new
stream, and starts another when it ends. Nothing here awaits a page or the fan-out: a record that the fan-out
cannot take yet waits in order in `_out` and goes when the feed is writable again.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import socket
import sys
from collections import deque

from ..config import LiveOptions
from .fanout import CLIENT, CLOSED, FRAMES, RECORD

log = logging.getLogger(__name__)

MAX_BACKLOG = 64 * 1024 * 1024  # unsent feed bytes past which the fan-out is stuck: it is replaced
RESTART_DELAY = (0.2, 30.0)  # after a fan-out ended unasked: the first wait, doubled while it keeps ending early
STABLE_AFTER = 60.0  # seconds a fan-out must have run for the next restart to wait the shortest delay again
STOP_TIMEOUT = 5.0


class FanoutProcess:
    """One fan-out child: `send` a change, `hand_over` a stream; `streams` counts the streams it holds."""

    def __init__(self, options: LiveOptions, log_level: str = "INFO") -> None:
        self.options = options
        self.log_level = log_level
        self.streams = 0  # handed over and not reported closed: never fewer than the fan-out holds
        self._process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        # What the fan-out has not taken yet, in order: (bytes, a stream's socket to send with them, its hand-over)
        self._out: deque[tuple[bytes, socket.socket | None, asyncio.Future[bool] | None]] = deque()
        self._out_bytes = 0
        self._closed_tail = b""
        self._writing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._ended: asyncio.Event = asyncio.Event()

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="live-fanout")

    async def stop(self) -> None:
        """Close the feed: the fan-out closes every stream (browsers reconnect and resume) and exits."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._end()

    # --- what the agent calls ---------------------------------------------------------------------

    def send(self, frames: bytes) -> None:
        """Every open stream gets frames (nothing is kept for streams handed over later)."""
        if self._sock is not None and frames:
            self._queue(RECORD.pack(FRAMES, len(frames)) + frames)

    async def hand_over(self, sock: socket.socket, first: bytes) -> bool:
        """Give the fan-out this stream, to be sent `first` and then every change sent after this call (its place
        is taken before the first await). True once the socket went to the fan-out: the caller then closes its
        own, and holds no file for the stream from there on. False when there is no fan-out to take it."""
        sent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue(RECORD.pack(CLIENT, len(first)) + first, sock, sent)  # the socket goes with its first byte
        if await sent:
            self.streams += 1
            return True
        return False

    # --- the feed ---------------------------------------------------------------------------------

    def _queue(self, data: bytes, sock: socket.socket | None = None, sent: asyncio.Future[bool] | None = None
               ) -> None:
        if self._sock is None:
            if sent is not None:
                sent.set_result(False)
            return
        self._out.append((data, sock, sent))
        self._out_bytes += len(data)
        if not self._writing:
            self._flush()
        if self._out_bytes > MAX_BACKLOG and self._sock is not None:
            log.error("the live fan-out stopped reading its feed (%d bytes waiting); replacing it", self._out_bytes)
            self._lost()

    def _flush(self) -> None:
        sock = self._sock
        while self._out and sock is not None:
            data, stream, handed = self._out[0]
            try:
                if stream is None:
                    sent = sock.send(data)
                elif stream.fileno() < 0:  # closed while it waited: nothing of it was sent, none of it is
                    self._refuse_first()
                    continue
                else:
                    fds = array.array("i", [stream.fileno()])
                    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                if stream is not None and err.errno == errno.ETOOMANYREFS:  # too many sockets on their way to the
                    self._refuse_first()  # fan-out for this user's file limit: this page gets a 503 and comes back
                    continue
                log.error("cannot write the live fan-out's feed: %s", err)
                self._lost()
                return
            if handed is not None and not handed.done():  # the socket went with the first byte
                handed.set_result(True)
            self._out_bytes -= sent
            if sent == len(data):
                self._out.popleft()
            else:
                self._out[0] = (data[sent:], None, None)
        waiting = bool(self._out)
        if waiting != self._writing and sock is not None:
            loop = asyncio.get_running_loop()
            if waiting:
                loop.add_writer(sock, self._flush)
            else:
                loop.remove_writer(sock)
            self._writing = waiting

    def _refuse_first(self) -> None:
        """Drop the hand-over at the head of the queue, none of it sent: its page is answered 503."""
        data, _, handed = self._out.popleft()
        self._out_bytes -= len(data)
        if handed is not None and not handed.done():
            handed.set_result(False)

    def _read_reports(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        data = self._closed_tail + data
        whole = len(data) - len(data) % CLOSED.size
        for (closed,) in CLOSED.iter_unpack(data[:whole]):
            self.streams = max(0, self.streams - closed)
        self._closed_tail = data[whole:]

    # --- the process ------------------------------------------------------------------------------

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sync_agent.host.live.fanout", "--feed-fd", str(theirs.fileno()),
                "--client-buffer", str(self.options.client_buffer), "--heartbeat", str(self.options.heartbeat),
                "--log-level", self.log_level, stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock, self._closed_tail, self.streams = ours, b"", 0
        self._ended = asyncio.Event()
        asyncio.get_running_loop().add_reader(ours, self._read_reports)
        log.debug("live fan-out started (pid %d)", self._process.pid)

    def _lost(self) -> None:
        """The feed broke: drop it (the process is ended by _end) and let the supervisor start another."""
        self._ended.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock)
            if self._writing:
                loop.remove_writer(sock)
            sock.close()
        self._writing = False
        for _, _, handed in self._out:
            if handed is not None and not handed.done():
                handed.set_result(False)
        self._out.clear()
        self._out_bytes = 0
        self.streams = 0

    async def _end(self) -> None:
        self._lost()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            log.warning("the live fan-out did not end in %gs of its feed closing; killing it", STOP_TIMEOUT)
            process.kill()
            await process.wait()

    async def _supervise(self) -> None:
        delay = RESTART_DELAY[0]
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._ended.wait()
            process = self._process
            await self._end()
            code = process.returncode if process is not None else "?"
            delay = RESTART_DELAY[0] if loop.time() - started > STABLE_AFTER else min(delay * 2, RESTART_DELAY[1])
            log.error("the live fan-out ended (exit %s); its pages reconnect and resume. Starting another in %.1fs",
                      code, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except OSError as err:
                log.error("cannot start the live fan-out: %s", err)
                self._ended.set()
