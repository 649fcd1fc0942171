"""The agent's HTTP listener and the live stream: asyncio streams on a unix socket behind nginx.

Routes are a table (path → handler), so health and metrics can join `/_sync/events` later. The agent answers a
stream's request (the resume or the snapshot needs its state: hub.py) and then hands the connected socket to the
fan-out process (feed.py, fanout.py), which alone writes to it from there on: `update` encodes each change once
(LiveState, pure) and writes it once to the fan-out, whatever the number of pages. So a stalled browser, or twenty
thousand of them, costs the agent's apply path one write per change, never a write per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio

from ...protocol import Keys, Message
from ...snapshot import Point
from ..config import LiveOptions
from ..shared_data import ReleaseInfo
from .feed import FanoutProcess
from .http import MAX_HEAD_BYTES, Request, parse_request, response_head, text_response
from .hub import How, LiveState, Resume, StoreRecord
from .listener import BACKLOG, open_listener
from .sse import comment, retry

log = logging.getLogger(__name__)

EVENTS_PATH = "/_sync/events"
HEAD_TIMEOUT = 10.0  # seconds a connection may take to send its request head
WAIT_AHEAD = 2.0  # seconds a client whose id is ahead of this host waits for the host to get there
RETRY_MS = (1000, 3000)  # each stream's reconnect delay is drawn from this range: an agent restart spreads out
STORE_RESUMES_KEPT = 64  # resumes from the store's log kept for the current point (pages at the same id share one)
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
                  "X-Accel-Buffering": "no"}

StoreReader = Callable[[], Coroutine[Any, Any, StoreRecord]]
Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_record(client: redis.asyncio.Redis, keys: Keys) -> StoreRecord:
    """The store's epoch, change log and record of changes, in one MULTI (reads the agent's ACL user may do)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.epoch)
    pipe.lrange(keys.log, 0, -1)
    pipe.lrange(keys.changes, 0, -1)
    epoch, logged, changes = await pipe.execute()
    return StoreRecord.parse(epoch, logged, changes)


class LiveServer:
    """The listener, the streams and their fan-out, for one agent."""

    def __init__(self, options: LiveOptions, host: str, log_level: str = "INFO") -> None:
        self.options = options
        self.state = LiveState(host, options.ring)
        self.store: StoreReader | None = None  # set by the agent while it has a Redis session
        self.routes: dict[str, Handler] = {EVENTS_PATH: self._events}
        self.fanout = FanoutProcess(options, log_level)
        self.connections = 0  # requests being answered here (a stream is the fan-out's once it started)
        self._server: asyncio.AbstractServer | None = None
        self._bound: Path | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._updated = asyncio.Event()  # set and replaced at every update: what a waiting client waits on
        self._record: StoreRecord | None = None  # the last read of the store's record, while it covers the point
        self._record_read: asyncio.Task[StoreRecord] | None = None
        self._from_store: dict[Point, Resume] = {}  # resumes from the store at this point, by the page's id

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        sock, bound = open_listener(self.options.socket)
        self._bound = self.options.socket if bound else None
        # asyncio listens again with its own backlog (100 unless told): a full backlog refuses a unix connect at once
        # (nginx answers 502), so keep the one the socket was made with.
        self._server = await asyncio.start_unix_server(self._connected, sock=sock, limit=MAX_HEAD_BYTES,
                                                       backlog=BACKLOG)
        await self.fanout.start()
        log.info("live stream on %s (%s), at most %d clients", sock.getsockname() or self.options.socket,
                 "bound by the agent" if bound else "from systemd", self.options.max_clients)

    async def stop(self) -> None:
        """Stop accepting, close every stream (browsers reconnect and resume), end every task."""
        if self._server is not None:
            self._server.close()
        await self.fanout.stop()
        tasks = [task for task in (*self._handlers, self._record_read) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._bound is not None:
            with contextlib.suppress(OSError):
                self._bound.unlink()

    # --- what the agent feeds ---------------------------------------------------------------------

    def update(self, point: Point, data: dict[str, Any], changes: Sequence[Message] | None,
               release: ReleaseInfo | None) -> None:
        """The agent's state after a batch landed. Costs the frames' encoding and one write to the fan-out."""
        self.fanout.send(self.state.update(point, data, changes, release))
        self._from_store.clear()
        self._updated.set()
        self._updated = asyncio.Event()

    # --- connections ------------------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # stop(): the connection's own task ends here; asyncio's stream callback
            pass  # would log a cancelled handler as an error
        finally:
            self.connections -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.close()  # after what was written; a stream handed over lives on in the fan-out's copy

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(text_response(431, "request head too large"))
            return
        except TimeoutError:
            writer.write(text_response(408, "no request in time"))
            return
        request = parse_request(head)
        if request is None:
            writer.write(text_response(400, "not an HTTP/1.x request"))
            return
        if self.connections + self.fanout.streams > self.options.max_clients:
            writer.write(text_response(503, "too many live clients on this host; retry later", {"Retry-After": "5"}))
            return
        handler = self.routes.get(request.path)
        if handler is None:
            writer.write(text_response(404, f"no such path: {request.path[:200]}"))
            return
        if request.method != "GET":
            writer.write(text_response(405, "GET only", {"Allow": "GET"}))
            return
        await handler(request, reader, writer)

    async def _events(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One stream: what the client missed (or a snapshot), then every change until either side closes."""
        while not self.state.ready:  # the agent has not applied a snapshot yet: nothing to start from
            await self._updated.wait()
        last = request.headers.get("last-event-id") or request.query.get("last_event_id")
        resume = await self._resume(last)
        # From here to the hand-over nothing awaits: no frame can fall between the two.
        start = response_head(200, STREAM_HEADERS) + retry(random.randint(*RETRY_MS)) + comment(resume.how.value +
                                                                                              ": " + resume.why)
        body = resume.frames if resume.how is not How.SNAPSHOT else self.state.snapshot()
        sock = writer.get_extra_info("socket")
        if isinstance(writer.transport, asyncio.ReadTransport):  # it must not see an EOF and close the socket
            writer.transport.pause_reading()  # before the fan-out has it
        if sock is None or not await self.fanout.hand_over(sock, start + body):
            writer.write(text_response(503, "the live stream is restarting on this host; retry", {"Retry-After": "1"}))
            return
        log.debug("a live stream starts (%d open) with %s: %s", self.fanout.streams, resume.how.value, resume.why)

    async def _resume(self, last_event_id: str | None) -> Resume:
        resume = self.state.plan(last_event_id)
        if resume.how is How.WAIT and resume.client is not None:
            target = resume.client.revision
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_AHEAD):
                    while self.state.point is not None and self.state.point.revision < target:
                        await self._updated.wait()
            resume = self.state.plan(last_event_id)
            if resume.how is How.WAIT:
                return Resume(How.SNAPSHOT, f"this host did not reach the id's revision in {WAIT_AHEAD:g}s")
            resume = dataclasses.replace(resume, why=f"{resume.why}, once this host reached revision {target}")
        if resume.how is How.STORE and resume.client is not None:
            record = await self._store_record()
            if record is None:
                return Resume(How.SNAPSHOT, "the store's log cannot be read now", resume.client)
            # The pages of a restarted agent come back with the same few ids: each is worked out once per point.
            known = self._from_store.get(resume.client)
            if known is None:
                if len(self._from_store) >= STORE_RESUMES_KEPT:
                    self._from_store.clear()
                known = self._from_store[resume.client] = self.state.from_record(resume.client, record)
            return known
        return resume

    async def _store_record(self) -> StoreRecord | None:
        """The store's record, read once for every client that resumes from it at the same point (a restarted
        agent has every page of the host reconnect at once), and read again when this host moved past it."""
        for _ in range(2):
            point = self.state.point
            record = self._record
            if record is not None and point is not None and point.revision in record.log:
                return record
            if self.store is None:
                return None
            if self._record_read is None or self._record_read.done():
                self._record_read = asyncio.create_task(self.store(), name="live-record")
            try:
                self._record = await asyncio.shield(self._record_read)
            except Exception as err:  # a failed read sends snapshots, never fails a stream otherwise
                log.warning("cannot read the store's change log for a resume: %s", err)
                return None
        return self._record
