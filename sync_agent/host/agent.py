"""The agent daemon: keep this host's `current` release and `shared/` files equal to the desired state in Redis.

Lifecycle of one connection (docs/reliability.md): subscribe to the events and
probe channels, read the snapshot, apply it, then apply messages in revision
order; a gap or a new epoch resyncs from the snapshot, and so does a timer.
A probe published to the host's own channel must come back in time, or the
session is treated as dead: reconnect (capped exponential backoff with
jitter), resubscribe, resync.

Lifecycle of the process (after uvicorn's server.py): signals only set a flag;
the main loop notices, lets the batch being applied finish, then cancels; a
second signal forces. READY=1 goes to systemd at once, since the host serves
what is on disk whether or not Redis is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import __version__
from ..errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ConfigError,
    ConnectionLost,
    FrontfleetError,
    ProtocolError,
    SnapshotRefused,
    UnsafePath,
)
from ..layout import CURRENT, current_release, live_dir, previous_release
from ..protocol import HostStatus, Message, parse_message
from ..snapshot import Snapshot
from .bus import CONNECTION_ERRORS, Backoff, Bus, describe
from .config import AgentConfig, load_config
from .decisions import Verdict
from .live.server import LiveServer, read_record
from .notify import Notifier, watchdog_interval
from .releases import PreparedSwitch
from .shared_data import APPLIED_FILE, DATA_FILE, ReleaseInfo, SharedFiles, install_client
from .state import AppliedState, Batch

log = logging.getLogger(__name__)

MAX_SWITCH_WAIT = 5.0  # a switch_at further ahead than this is a clock gone wrong: wait this long at most
SWITCH_TAIL = 0.003  # the last part of a wait sleeps in the kernel (time.sleep), not in epoll's 1 ms ticks
# After a switch at a deadline, block (not await) this long before the rest of the batch: agents that share
# cores (containers on one machine) wake at the same deadline, and the rest of a batch (ack, render, ~1 ms of
# CPU) would otherwise run before the other agents' renames. Costs the ack 1 ms on a host of its own.
SWITCH_YIELD = 0.001
# In a burst (a batch of several changes, or more already waiting), pause before reading again, for 10 times the
# time the batch took, within these bounds: bigger batches, so the CPU per change falls as the rate rises instead
# of one wake-up per change (on shared cores that starves the publisher itself; docs/performance.md). A change
# arriving alone (steady load) is followed by no pause.
COALESCE_FACTOR = 10.0
COALESCE_MIN = 0.005
COALESCE_MAX = 0.5
STATUS_EVERY = 0.05  # data-only acknowledgements: at most one status SET per this many seconds (a switch acks at once)
DRAIN_SECONDS = 0.5  # how long a stop waits for the batch being applied before it cancels
CLOSE_SECONDS = 0.3  # closing a dead connection must not hold up a reconnect or a stop
WRITE_RETRY_MIN = 0.2  # a write the filesystem refused (disk full, read-only) is retried after this, doubling…
WRITE_RETRY_MAX = 5.0  # …up to this, until it lands
BAD_INPUT_LOG_EVERY = 10.0  # a flood of bad input is logged once per this many seconds (each new kind at once)

T = TypeVar("T")


@dataclass
class _Probes:
    """Probes still out: token → (loop time sent, the agent's excused seconds by then)."""

    sent: dict[bytes, tuple[float, float]] = field(default_factory=dict)

    def returned(self, token: bytes) -> None:
        """Probes come back in order: this one and every earlier one are home."""
        if token not in self.sent:
            return
        for key in list(self.sent):
            del self.sent[key]
            if key == token:
                break

    def overdue(self, now: float, excused: float, timeout: float) -> float:
        """Age of the oldest probe still out, if it is older than timeout; else 0. The age leaves out the
        excused seconds: the time a batch ran (its work, a busy core's delays included) and a switch_at wait,
        when no message is read, so a burst on busy cores does not pass for a dead connection. Time a batch
        spends awaiting anything else counts: a reading end stuck on an await is a stalled subscription."""
        if not self.sent:
            return 0.0
        sent_at, excused_at = next(iter(self.sent.values()))
        age = now - sent_at - (excused - excused_at)
        return age if age > timeout else 0.0


class _Timed(Generic[T]):
    """Await a coroutine and add up the time it ran (its steps on the event loop), not the time it waited.

    A batch's awaits (a snapshot read, a status write, a lock) can last as long as whatever they wait on; only
    the work in between is the agent being busy. Each step is timed on the wall clock, so a step that waited
    for a busy core counts as running."""

    def __init__(self, coro: Coroutine[Any, Any, T], add: Callable[[float], None]) -> None:
        self._coro = coro
        self._add = add

    def __await__(self) -> Generator[Any, Any, T]:
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.monotonic()
            try:
                future = self._coro.send(value) if error is None else self._coro.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                self._add(time.monotonic() - started)
            try:
                value, error = (yield future), None
            except BaseException as err:  # a cancellation, or whatever the task throws in, goes to the coroutine
                value, error = None, err


async def _finish(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until every one has ended, cancelling again any that goes on.

    A cancellation can be lost: on Python 3.11, asyncio.wait_for (which redis-py wraps around every send) returns
    normally when its command completes as the cancel arrives, and the task carries on (a status writer back at
    its wait, a heartbeat that keeps the host looking alive). Waiting once for such a task would wait forever, with
    nobody reading the subscription. A cancellation of the caller meanwhile is honoured after the tasks ended."""
    pending = {task for task in tasks if not task.done()}
    warned: set[asyncio.Task[Any]] = set()
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=CLOSE_SECONDS)
        except asyncio.CancelledError:
            interrupted = True
            continue
        for task in pending - warned:
            log.warning("task %s went on after it was cancelled; cancelling it again", task.get_name())
        warned |= pending
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller reports the one that matters
    if interrupted:
        raise asyncio.CancelledError


async def _first_of(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Wait until one task ends, end the others, then raise the first one's error (if any)."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _finish(tasks)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _wait_for_deadline(bus: Bus, switch_at: int, release: str,
                             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Sleep until switch_at (µs, Redis' clock) on this host's clock corrected by its offset to Redis.

    A deadline already passed returns at once; one absurdly far ahead is capped. The last few ms block in
    time.sleep: the event loop wakes up to a millisecond late, which alone would spread the fleet's switches."""
    remaining = switch_at / 1e6 - bus.server_now()
    log.debug("switch to %s at switch_at %d, in %.3f ms", release, switch_at, remaining * 1e3)
    if remaining <= 0:
        log.info("switch to %s is %.1f ms past its switch_at: switching now", release, -remaining * 1e3)
        return
    if remaining > MAX_SWITCH_WAIT:
        log.warning("switch_at of release %s is %.1fs ahead (clock skew?); switching in %gs instead", release,
                    remaining, MAX_SWITCH_WAIT)
        remaining = MAX_SWITCH_WAIT
    deadline = time.monotonic() + remaining
    if remaining > SWITCH_TAIL:
        await sleep(remaining - SWITCH_TAIL)
    rest = deadline - time.monotonic()
    if rest > 0:
        time.sleep(rest)


class Agent:
    """The agent's state and its loops. One instance per process."""

    def __init__(self, config: AgentConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.root = config.release_root
        self.notifier = notifier or Notifier()
        self.shared = SharedFiles(config.shared_dir, config.templates_dir, config.host, config.private_dir)
        self.applied = AppliedState(config.host)
        self.connected = False
        self.current: str | None = None
        self.previous: str | None = None
        self.switched_at_ns = 0
        self._write_errors: dict[str, str] = {}  # what failed to land: "data", "current", "render" → why
        self._write_backoff = Backoff(WRITE_RETRY_MIN, WRITE_RETRY_MAX)
        self._write_retry_at: float | None = None  # loop time of the next retry while a write fails
        self._bad_logged: tuple[str, float] = ("", 0.0)  # the last bad input logged, and when
        self._bad_unlogged = 0
        self._labels: dict[str, str] = {}
        self._unstaged_logged: str | None = None
        self._status_lock = asyncio.Lock()
        self._status_wanted = asyncio.Event()
        self._status_writer_running = False
        self._render_due = False  # a batch changed what the templates show; rendered when no message waits
        self._probes = _Probes()
        self._probe_tokens = itertools.count(1)
        self._last_systemd_status = ""
        self._busy = False  # a batch is being applied (a stop lets it finish)
        self._excused = 0.0  # seconds the probe's age leaves out: batches running, switch_at waits (_Probes.overdue)
        self._sleeping_since: float | None = None  # loop time a switch_at wait began, while it lasts
        self._consuming = asyncio.Event()  # this session reads its subscription: the probe loop starts
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self._main_task: asyncio.Task[None] | None = None
        self.live = LiveServer(config.live, config.host, config.log_level) if config.live is not None else None

    # --- state ----------------------------------------------------------------------------------

    def host_status(self, seen_at: float) -> HostStatus:
        return HostStatus(
            release=self.current or "",
            previous=self.previous or "",
            revision=self.applied.acked[1],
            epoch=self.applied.acked[0] or "",
            state=self.applied.state,
            error=self.applied.error_text(),
            switched_at_ns=self.switched_at_ns,
            seen_at=round(seen_at, 6),
            heartbeat=self.config.heartbeat,
            agent_version=__version__,
            pid=os.getpid(),
            batches=self.applied.batches,
            resyncs=self.applied.resyncs,
            skipped=self.applied.skipped,
        )

    def systemd_status(self) -> str:
        where = "connected" if self.connected else "not connected to Redis"
        text = (f"{self.applied.state}: release {self.current or '-'}, revision {self.applied.acked[1]}, "
                f"epoch {self.applied.acked[0] or '-'}, {where}")
        error = self.applied.error_text()
        return f"{text}; {error}" if error else text

    def _tell_systemd(self) -> None:
        text = self.systemd_status()
        if text != self._last_systemd_status:
            self._last_systemd_status = text
            self.notifier.status(text)

    # --- applying -------------------------------------------------------------------------------

    def _apply_message(self, message: Message, batch: Batch) -> None:
        self.applied.apply_message(message, batch)

    def _bad_input(self, what: str, err: BaseException) -> None:
        """Count, report and log a bad input: each new kind at once, a flood of the same once per interval."""
        self.applied.skipped += 1
        text = f"skipped {what}: {err}"
        self.applied.errors["message"] = text
        last, logged_at = self._bad_logged
        now = time.monotonic()
        if text[:80] != last[:80] or now - logged_at >= BAD_INPUT_LOG_EVERY:
            more = f" ({self._bad_unlogged} more skipped since the last such line)" if self._bad_unlogged else ""
            log.warning("%s%s", text, more)
            self._bad_logged, self._bad_unlogged = (text, now), 0
        else:
            self._bad_unlogged += 1

    async def _process(self, bus: Bus, items: list[tuple[bytes, bytes]]) -> int:
        """Apply a batch in revision order, resyncing on a gap or a new epoch, then write the files once.
        Returns how many changes it applied."""
        batch = Batch()
        probe_channel = bus.probe_channel
        had_error = self.applied.error_text()
        counted = False
        for channel, raw in items:
            if channel == probe_channel:
                self._probes.returned(raw)
                continue
            if not counted:  # a batch of events (probes coming home alone are not one)
                self.applied.batches += 1
                counted = True
            try:
                message = parse_message(raw)
            except Exception as err:  # whatever the input makes the parser raise, it is bad input, never fatal
                self._bad_input(f"a bad message on {channel.decode(errors='replace')}", err)
                continue
            verdict = self.applied.judge(message, batch)
            if verdict is Verdict.APPLY:
                self._apply_message(message, batch)
            elif verdict is Verdict.DUPLICATE:
                log.debug("skipped duplicate revision %d (applied %d)", message.revision, self.applied.revision)
            elif verdict is Verdict.IGNORE:
                log.debug("ignored event of epoch %s revision %d after this batch's resync", message.epoch,
                          message.revision)
            else:
                await self._resync(bus, batch, self._why_resync(message))
        if batch.applied:
            log.info("applied revisions %d..%d (%d change(s)) in epoch %s", batch.first, self.applied.revision,
                     batch.applied, self.applied.epoch)
        if batch.data or batch.private or batch.release or batch.resynced:
            await self._flush(bus, batch)
        elif self.applied.error_text() != had_error:
            await self.ack(bus)  # a skipped message or a refused snapshot shows in the status at once
            self._tell_systemd()
        return batch.applied

    def _why_resync(self, message: Message) -> str:
        applied = self.applied
        if message.epoch != applied.epoch:
            return f"message from epoch {message.epoch}, applied epoch {applied.epoch or '-'}"
        if message.revision <= applied.revision:
            return (f"revision {message.revision} came again as change {message.id or '(no id)'}, this host applied "
                    f"{applied.known.get(message.revision)}")
        if message.revision == applied.revision + 1:
            return (f"change {message.id or '(no id)'} of revision {message.revision} does not chain onto "
                    f"{applied.change_id or '(none)'} (its parent: {message.parent or '(none)'})")
        return f"gap: got revision {message.revision} after {applied.revision}"

    async def _read_snapshot(self, bus: Bus) -> Snapshot | None:
        """The snapshot, or None when it is refused whole (its epoch or revision cannot be read): the host then
        keeps serving what it serves, `degraded`, until a readable snapshot arrives."""
        try:
            snapshot = await bus.snapshot()
        except SnapshotRefused as err:
            if self.applied.errors.get("snapshot") != f"snapshot refused: {err}":
                log.error("snapshot refused, serving what is on disk: %s", err)
            self.applied.errors["snapshot"] = f"snapshot refused: {err}"
            return None
        if self.applied.errors.pop("snapshot", None) is not None:
            log.info("the snapshot can be read again")
        return snapshot

    async def _resync(self, bus: Bus, batch: Batch, why: str) -> None:
        batch.snapshot_read = True
        self.applied.resyncs += 1
        snapshot = await self._read_snapshot(bus)
        if snapshot is None:
            return  # nothing in it applies: the files stay as they are, the refusal shows in the status
        if not self.applied.is_news(snapshot) and self.applied.synced:
            log.debug("a stale message (%s); the store is where this host is", why)
            return
        self.applied.apply_snapshot(snapshot, batch, why)

    async def _ensure_release(self, bus: Bus, switch_at: int | None) -> bool:
        """Switch `current` to this host's target if it differs, at switch_at when given (prepared first, so the
        wait ends in a rename and nothing else). Returns True when it switched."""
        target = self.applied.desired.target_for(self.config.host)
        if target is None or target == self.current:
            self.applied.errors.pop("release", None)
            self._unstaged_logged = None
            return False
        prepared: PreparedSwitch | None = None
        try:
            prepared = PreparedSwitch(self.root, target)
            if switch_at is not None:
                await _wait_for_deadline(bus, switch_at, target, self._excused_sleep)
            result = prepared.commit()
            if switch_at is not None:
                time.sleep(SWITCH_YIELD)
        except FrontfleetError as err:
            self.applied.errors["release"] = f"cannot switch to {target}: {err}"
            if self._unstaged_logged != target:
                log.error("cannot switch to release %s, staying on %s: %s", target, self.current or "-", err)
                self._unstaged_logged = target
            return False
        except OSError as err:  # the filesystem refused the new link: a write to retry, not a release problem
            self._write_failed("current", f"cannot switch current to {target}: {err}")
            return False
        finally:
            if prepared is not None:
                with contextlib.suppress(OSError):
                    prepared.abort()
        self.applied.errors.pop("release", None)
        self._write_landed("current")
        self._unstaged_logged = None
        self.current, self.previous = target, result.previous
        if result.switched_at_ns:
            self.switched_at_ns = result.switched_at_ns
        return result.switched

    async def _flush(self, bus: Bus, batch: Batch) -> None:
        """Write what the batch changed: switch, data.json, the status (the ack), then the templates."""
        switched = await self._ensure_release(bus, batch.switch_at) if batch.release else False
        wrote = batch.data and self._write("data", lambda: self.shared.write_data(self.applied.data),
                                           self.shared.shared_dir / DATA_FILE)
        # Private data lands in private/ alone; `wrote` stays about data.json (what the public side reads).
        wrote_private = batch.private and self._write(
            "private", lambda: self.shared.write_private(self.applied.private), self.shared.private_dir)
        if wrote or wrote_private or switched or (batch.resynced and not self.applied.store_empty):
            self._render_due = True  # by _render_when_idle, after this batch or after the burst it is part of
        self._advance_ack()
        await self.ack(bus, now=switched)
        if self.live is not None and (wrote or not batch.data) and self.applied.loaded and not self.applied.store_empty:
            await self._feed_live(bus, batch)
        self._tell_systemd()

    async def _feed_live(self, bus: Bus, batch: Batch) -> None:
        """Hand the live stream what this host serves now that the batch's writes landed (a batch whose data.json
        failed is handed over by its retry). The label costs a round trip once per release; the rest no await."""
        point = self.applied.point
        if point is None or self.live is None:
            return
        release = await self._release_info(bus)
        self.live.update(point, self.applied.data, None if batch.resynced else batch.changes, release)

    # --- writes that must land before they are acknowledged -------------------------------------------------

    def _write(self, what: str, write: Callable[[], None], where: Path | None) -> bool:
        """One write of a batch (nothing while the store is empty): True when it landed, else noted to retry."""
        if self.applied.store_empty:
            return False
        try:
            write()
        except OSError as err:
            self._write_failed(what, f"cannot write {where}: {err}")
            return False
        self._write_landed(what)
        return True

    def _write_failed(self, what: str, why: str) -> None:
        """Note a write the filesystem refused: the host is degraded, the ack holds, a retry is scheduled."""
        if self._write_errors.get(what) != why:
            log.error("%s; retrying with backoff, the acknowledged revision stays at %d", why, self.applied.acked[1])
        self._write_errors[what] = why
        self.applied.errors["write"] = "; ".join(self._write_errors[key] for key in sorted(self._write_errors))
        if self._write_retry_at is None:
            self._write_retry_at = time.monotonic() + self._write_backoff.next_delay()

    def _write_landed(self, what: str) -> None:
        if self._write_errors.pop(what, None) is None:
            return
        log.info("the write that failed (%s) landed", what)
        if self._write_errors:
            self.applied.errors["write"] = "; ".join(self._write_errors[key] for key in sorted(self._write_errors))
            return
        self.applied.errors.pop("write", None)
        self._write_backoff.reset()
        self._write_retry_at = None

    def _advance_ack(self) -> None:
        """The acknowledged (epoch, revision) moves only once every write for it landed, templates included, and
        the applied point is on disk (so a restart does not forget it)."""
        if (self._write_errors and set(self._write_errors) != {"applied"}) or self._render_due:
            return
        point = self.applied.point
        if point is None or point == self.applied.acked_point:
            return
        try:
            self.shared.write_applied(point, self.applied.left)
        except OSError as err:
            self._write_failed("applied", f"cannot write {self.shared.shared_dir / APPLIED_FILE}: {err}")
            return
        self._write_landed("applied")
        self.applied.acked, self.applied.acked_id = (point.epoch, point.revision), point.id

    async def _retry_writes(self, bus: Bus) -> None:
        """Write everything again (data.json, current, the templates) after a write failed; until it lands, the
        next try follows with backoff."""
        self._write_retry_at = None
        await self._flush(bus, Batch(data=True, private=True, release=True, resynced=True))
        if self._render_due:
            await self._render(bus)
        if self._write_errors and self._write_retry_at is None:
            self._write_retry_at = time.monotonic() + self._write_backoff.next_delay()

    async def _render_when_idle(self, bus: Bus) -> None:
        """Render the templates if a batch changed what they show and no further message is already here; else
        the next batch will: a burst renders once, at its end, and data.json never waits for a render."""
        if self._render_due and not bus.pending():
            await self._render(bus)

    async def _render(self, bus: Bus) -> None:
        self._render_due = False
        release = await self._release_info(bus)
        before = (self.applied.acked, self.applied.errors.get("template"), self.applied.errors.get("write"))
        failures = self.shared.render(self.applied.data, release, self.applied.revision, self.applied.private)
        if failures:
            self.applied.errors["template"] = self.shared.error_summary()
        else:
            self.applied.errors.pop("template", None)
        if self.shared.write_errors:
            self._write_failed("render", "; ".join(self.shared.write_errors.values()))
        else:
            self._write_landed("render")
        self._advance_ack()
        if (self.applied.acked, self.applied.errors.get("template"), self.applied.errors.get("write")) != before:
            await self.ack(bus)
            self._tell_systemd()

    async def _release_info(self, bus: Bus) -> ReleaseInfo | None:
        """The release `current` points at, with its label (read from the store once per release)."""
        if self.current is None:
            return None
        label = self._labels.get(self.current)
        if label is None:
            label = await bus.release_label(self.current)
            self._labels[self.current] = label
        return ReleaseInfo(self.current, label)

    async def ack(self, bus: Bus, now: bool = False) -> None:
        """Report the applied state. After a switch, right away (before the templates); after data, through
        the status writer, so the next batch need not wait for the round trip and a burst costs a few SETs."""
        if now or not self._status_writer_running:
            await self.write_status(bus)
        else:
            self._status_wanted.set()

    async def _status_writer(self, bus: Bus) -> None:
        self._status_writer_running = True
        try:
            while True:
                await self._status_wanted.wait()
                self._status_wanted.clear()
                async with asyncio.timeout(self.config.command_timeout):  # no inner task to outlive a stop
                    await self.write_status(bus)
                await asyncio.sleep(STATUS_EVERY)  # what arrives meanwhile goes in the next SET
        finally:
            self._status_writer_running = False

    async def write_status(self, bus: Bus, clock: bool = False) -> None:
        """SET the status key; seen_at is Redis' clock (TIME on heartbeats, estimated from it in between)."""
        async with self._status_lock:
            seen_at = await bus.sync_clock() if clock else bus.server_now()
            await bus.write_status(self.host_status(seen_at).to_json())

    # --- one connection -------------------------------------------------------------------------

    async def _session(self, bus: Bus, backoff: Backoff) -> None:
        """Subscribe, resync, then consume until the connection fails (raises) or the agent stops."""
        await bus.open()
        await bus.sync_clock()
        if self.live is not None:
            self.live.store = lambda: read_record(bus.client, bus.keys)
        batch = Batch()
        snapshot = await self._read_snapshot(bus)
        if snapshot is not None:
            self.applied.apply_snapshot(snapshot, batch, "connected")
        # else nothing in it applies: the files stay as they are, and the flush below reports the refusal
        self.connected = True
        backoff.reset()
        await self._flush(bus, batch)
        await self._render_when_idle(bus)
        log.info("connected to Redis at %s as %s; subscribed to %s and %s", bus.where,
                 self.config.username or "default", bus.keys.events, bus.probe_channel.decode())
        self._consuming.set()
        await _first_of([asyncio.create_task(self._consume(bus), name="consume"),
                         asyncio.create_task(self._heartbeat_loop(bus), name="heartbeat"),
                         asyncio.create_task(self._status_writer(bus), name="status")])

    async def _watched_session(self, bus: Bus, backoff: Backoff) -> None:
        """The session, with the probe loop beside it rather than inside it: whatever the session is stuck on
        (an await in a batch, a task that will not end), its probes stop coming home and the probe loop ends
        it from here."""
        self._probes = _Probes()
        self._consuming = asyncio.Event()
        await _first_of([asyncio.create_task(self._session(bus, backoff), name="session"),
                         asyncio.create_task(self._probe_loop(bus), name="probe")])

    async def _consume(self, bus: Bus) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + self.config.reconcile
        while not self.should_exit.is_set():
            wake = next_reconcile
            if self._write_retry_at is not None:
                wake = min(wake, loop.time() + self._write_retry_at - time.monotonic())
            items = await bus.messages(timeout=max(0.0, wake - loop.time()))
            started = loop.time()
            reconcile = started >= next_reconcile
            self._busy = True
            try:
                applied = await _Timed(self._work(bus, items, reconcile), self._excuse)
            finally:
                self._busy = False
            if reconcile:
                next_reconcile = loop.time() + self.config.reconcile
            spent = loop.time() - started
            if applied > 1 or (applied and bus.pending()):
                await asyncio.sleep(min(COALESCE_MAX, max(COALESCE_MIN, spent * COALESCE_FACTOR)))

    async def _work(self, bus: Bus, items: list[tuple[bytes, bytes]], reconcile: bool) -> int:
        """One turn of the reading loop between two reads: the batch, a due write retry or reconcile, the render.
        Returns how many changes it applied."""
        applied = await self._process(bus, items) if items else 0
        if self._write_retry_at is not None and time.monotonic() >= self._write_retry_at:
            await self._retry_writes(bus)
        if reconcile:
            await self._reconcile(bus)
        await self._render_when_idle(bus)
        return applied

    def _excuse(self, seconds: float) -> None:
        self._excused += seconds

    async def _excused_sleep(self, seconds: float) -> None:
        """Sleep with the probe's age leaving the time out: a switch_at wait, when no message is read."""
        loop = asyncio.get_running_loop()
        self._sleeping_since = loop.time()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._excused += loop.time() - self._sleeping_since
            self._sleeping_since = None

    def _excused_by(self, now: float) -> float:
        """The excused seconds so far, a switch_at wait under way included."""
        return self._excused + (now - self._sleeping_since if self._sleeping_since is not None else 0.0)

    async def _reconcile(self, bus: Bus) -> None:
        """Compare with the snapshot on a timer: catches anything missed, retries a switch that failed."""
        snapshot = await self._read_snapshot(bus)
        if snapshot is None:
            await self.ack(bus)
            return
        if "session" in self.applied.errors:  # a whole reconcile interval without the session failing again
            cleared = self.applied.errors.pop("session")
            log.info("the session has run a reconcile interval without failing: %s cleared", cleared)
        batch = Batch()
        if snapshot.epoch == self.applied.epoch and snapshot.revision > self.applied.revision and bus.pending():
            return  # behind only by what has arrived already (a burst): the next batch closes it or shows the gap
        if self.applied.is_news(snapshot) or "history" in self.applied.errors or not self.applied.synced:
            why = (f"reconcile: store at epoch {snapshot.epoch or '-'} revision {snapshot.revision}, "
                   f"applied epoch {self.applied.epoch or '-'} revision {self.applied.revision}")
            if not (snapshot.empty and self.applied.store_empty):
                self.applied.apply_snapshot(snapshot, batch, why)
                await self._flush(bus, batch)
            return
        if self.applied.desired.target_for(self.config.host) != self.current:
            batch.release = True
        if self.shared.errors or self.shared.templates_changed():
            batch.resynced = True
        if batch.release or batch.resynced:
            await self._flush(bus, batch)

    async def _probe_loop(self, bus: Bus) -> None:
        """Once the session reads its subscription, publish a probe to our own channel every interval; one that
        does not come back in time (the excused seconds left out) ends the session."""
        loop = asyncio.get_running_loop()
        timeout = self.config.probe_timeout
        await self._consuming.wait()
        while True:
            token = str(next(self._probe_tokens)).encode()
            self._probes.sent[token] = (loop.time(), self._excused_by(loop.time()))
            try:
                async with asyncio.timeout(timeout):  # not wait_for: on Python 3.11 it can lose a cancellation
                    await bus.publish_probe(token)
            except TimeoutError as err:
                raise ConnectionLost(f"the probe could not be published within {timeout:g}s") from err
            await asyncio.sleep(self.config.probe)
            now = loop.time()
            overdue = self._probes.overdue(now, self._excused_by(now), timeout)
            if overdue:
                raise ConnectionLost(f"a probe did not come back within {timeout:g}s (out for {overdue:.1f}s): "
                                     "the subscription is dead")

    async def _heartbeat_loop(self, bus: Bus) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            async with asyncio.timeout(self.config.command_timeout):
                await self.write_status(bus, clock=True)
            self._tell_systemd()

    async def _connect_forever(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        while not self.should_exit.is_set():
            bus = Bus(self.config)
            try:
                await self._watched_session(bus, backoff)
                cause = "stopped"
            except CONNECTION_ERRORS as err:
                cause = describe(err)
            except Exception as err:  # a bug or an input nobody foresaw ends this session, never the process
                cause = f"unexpected {type(err).__name__}: {err}"
                log.error("the Redis session failed: %s", cause, exc_info=err)
                self.applied.errors["session"] = f"the session failed and was restarted ({cause})"
            finally:
                self.connected = False
                if self.live is not None:
                    self.live.store = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_SECONDS):  # not wait_for, which can lose a cancellation (3.11)
                        await bus.close()
            if self.should_exit.is_set():
                return
            delay = backoff.next_delay()
            log.warning("Redis connection failed (%s); retrying in %.2fs (attempt %d)", cause, delay, backoff.attempt)
            self._tell_systemd()
            await asyncio.sleep(delay)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # --- the process ----------------------------------------------------------------------------

    def _restore_applied(self) -> None:
        """Start from the point acknowledged before the restart. A file that cannot be read is reported and
        dropped: the agent then starts as a new host would (any snapshot that vouches for itself)."""
        try:
            point, left = self.shared.read_applied()
        except (OSError, ValueError, ProtocolError, UnsafePath) as err:  # a symlink or FIFO planted there too
            log.error("cannot read %s (%s): starting as a new host would", self.shared.shared_dir / APPLIED_FILE, err)
            return
        self.applied.restore(point, left)
        if point is not None:
            log.info("applied before the restart: %s", point)

    async def _start_live(self) -> None:
        """Open the live stream's listener and put its browser client in shared/. A listener that cannot open
        is logged and left off: the host still serves and follows the store, which matters more."""
        if self.live is None:
            return
        try:
            install_client(self.shared.shared_dir)
            await self.live.start()
        except OSError as err:
            log.error("cannot open the live stream on %s, running without it: %s", self.live.options.socket, err)
            self.live = None

    def _signal(self, signum: int) -> None:
        """First signal: stop gracefully. Second: force."""
        if self.should_exit.is_set():
            log.warning("received %s again: forcing the exit", signal.Signals(signum).name)
            self.force_exit = True
            if self._main_task is not None:
                self._main_task.cancel()
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.should_exit.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signal, signum)
        self.shared.ensure_dir()
        self.shared.ensure_private_dir()
        self._restore_applied()
        self.current = current_release(self.root)
        self.previous = previous_release(self.root)
        with contextlib.suppress(OSError):  # the last switch, before a restart
            self.switched_at_ns = os.lstat(live_dir(self.root) / CURRENT).st_mtime_ns
        self.notifier.ready(self.systemd_status())
        gc.collect()
        gc.freeze()  # what start-up built (modules, Jinja, redis-py) lives on: no full collection walks it again
        log.info("sync agent %s started for host %s: serving release %s from %s (degraded until the first "
                 "snapshot)", __version__, self.config.host, self.current or "-", self.root)
        await self._start_live()
        helpers = []
        interval = watchdog_interval()
        if interval is not None:
            helpers.append(asyncio.create_task(self._watchdog(interval)))
        self._main_task = asyncio.create_task(self._connect_forever())
        waiter = asyncio.create_task(self.should_exit.wait())
        try:
            await asyncio.wait({self._main_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            self.notifier.stopping()
            deadline = loop.time() + DRAIN_SECONDS
            while self._busy and not self.force_exit and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await _finish([self._main_task, waiter, *helpers])
            if self.live is not None:
                await self.live.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self._main_task.done() and not self._main_task.cancelled() and self._main_task.exception():
            error = self._main_task.exception()
            log.error("the agent failed: %s", error, exc_info=error)
            return EXIT_FAILURE
        log.info("stopped%s", " (forced)" if self.force_exit else "")
        return EXIT_FAILURE if self.force_exit else EXIT_OK


def setup_logging(config: AgentConfig) -> None:
    """One line per event on stdout; journald adds the time, so the line does not."""
    handler = logging.StreamHandler(sys.stdout)
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler.setFormatter(logging.Formatter(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level_number)
    if config.log_level_number > logging.DEBUG:
        logging.getLogger("redis").setLevel(logging.WARNING)


def main(config_path: str) -> int:
    """Run the agent until SIGTERM; returns the exit code (2 for a bad config, naming the key)."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(f"sync-agent: {err}", file=sys.stderr)
        return err.exit_code
    setup_logging(config)
    try:
        return asyncio.run(Agent(config).run())
    except OSError as err:
        log.error("cannot run the agent: %s", err)
        return EXIT_FAILURE
    finally:
        sys.stdout.flush()


__all__ = ["Agent", "main"]
