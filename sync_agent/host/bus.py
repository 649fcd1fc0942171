"""The agent's side of Redis: one connection session, subscribe, snapshot, status, probe, backoff.

A Bus is one session: it opens a client, subscribes to the namespace's events
channel and the host's probe channel in one SUBSCRIBE, and is thrown away on
any failure; service.py then waits (capped exponential backoff with jitter) and
opens a new one, which resubscribes and resyncs from the snapshot. redis-py's
own retries are off, so one policy, logged once per retry, owns reconnects.
Every command sent here is one the agent's ACL user may run (protocol.agent_acl_rules).
"""

from __future__ import annotations

import logging
import random
import select
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast

import redis
import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import ConnectionLost, ProtocolError
from ..protocol import Keys, load_json
from ..snapshot import Snapshot, parse_snapshot, queue_snapshot
from .config import AgentConfig

log = logging.getLogger(__name__)

CLOCK_SAMPLES = 3  # TIME round trips per clock sync (at connect and every heartbeat)
CLOCK_WINDOW = 30.0  # seconds: the offset comes from the shortest round trip among this window's samples


# Errors that mean "this session is over; reconnect".
CONNECTION_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError, TimeoutError, ConnectionLost)


def describe(err: BaseException) -> str:
    """A one-line cause for the reconnect log line."""
    if isinstance(err, redis.exceptions.NoPermissionError) or "NOPERM" in str(err):
        return f"Redis refused a command: {err} (check the agent's ACL user)"
    if isinstance(err, redis.exceptions.AuthenticationError):
        return f"Redis refused the credentials: {err} (check redis.username and redis.password_file)"
    text = str(err) or type(err).__name__
    return text if isinstance(err, ConnectionLost) else f"{type(err).__name__}: {text}"


def _take(kind: bytes | str, channel: bytes, data: bytes, batch: list[tuple[bytes, bytes]]) -> None:
    """Add a pushed message to the batch; an unsubscribe ends the session; confirmations and pongs are dropped."""
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "message":
        batch.append((channel, data))
    elif kind == "unsubscribe":
        raise ConnectionLost(f"Redis unsubscribed us from {channel!r}")


class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is uniform in [d/2, d], d = min(cap, base·2ⁿ)."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class Bus:
    """One Redis session of the agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.events_channel = self.keys.events.encode()
        self.probe_channel = self.keys.probe(config.host).encode()
        self.status_key = self.keys.host(config.host)
        extra: dict[str, Any] = {}
        if config.username:
            extra["username"] = config.username
        if config.password:
            extra["password"] = config.password
        if config.ca_file:
            extra["ssl_ca_certs"] = config.ca_file
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            config.redis_url,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.command_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
            **extra,
        )
        self.pubsub: PubSub = self.client.pubsub()
        self._early: list[tuple[bytes, bytes]] = []
        self._clock_offset = 0.0  # Redis' clock minus ours
        self._clock_samples: deque[tuple[float, float, float]] = deque()  # (taken at, round trip, offset)

    @property
    def where(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    async def open(self) -> None:
        """Subscribe to the events and probe channels in one SUBSCRIBE and wait for both confirmations."""
        await self.pubsub.subscribe(self.events_channel, self.probe_channel)
        pending = {self.events_channel, self.probe_channel}
        deadline = time.monotonic() + self.config.command_timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionLost("SUBSCRIBE was not confirmed in time")
            reply = await self.pubsub.get_message(timeout=remaining)
            if reply is None:
                continue
            if reply["type"] == "subscribe":
                pending.discard(reply["channel"])
            elif reply["type"] == "message":
                self._early.append((reply["channel"], reply["data"]))

    async def messages(self, timeout: float, limit: int = 10_000) -> list[tuple[bytes, bytes]]:
        """Wait up to timeout for a message, then take every message already received (coalescing).

        The rest of the batch comes straight from hiredis' buffer, in one pass: another get_message(timeout=0)
        per message, and one more to find nothing, each cost an event-loop round (docs/performance.md). What
        is still unread on the socket comes with the next call, at once."""
        batch, self._early = self._early, []
        if not batch:
            reply = await self.pubsub.get_message(timeout=max(timeout, 0.0))
            if reply is None:
                return batch
            _take(reply["type"], reply["channel"], reply["data"], batch)
        reader = self._hiredis_reader()
        while len(batch) < limit:
            if reader is None:  # redis-py without hiredis: its own parser, one message per call
                reply = await self.pubsub.get_message(timeout=0.0)
                if reply is None:
                    break
                _take(reply["type"], reply["channel"], reply["data"], batch)
                continue
            raw = reader.gets()
            if isinstance(raw, Exception):
                raise raw
            if not isinstance(raw, list):  # redis-py's NOT_ENOUGH_DATA: no complete reply is buffered
                break
            if len(raw) == 3:
                _take(raw[0], raw[1], raw[2], batch)
        return batch

    def pending(self) -> bool:
        """True when more of the subscription has arrived already (buffered, or unread on the socket), so the
        next batch follows at once: the agent then leaves the template render to the end of the burst."""
        reader = self._hiredis_reader()
        if reader is not None and reader.has_data():
            return True
        connection = self.pubsub.connection
        stream = getattr(connection, "_reader", None)
        if getattr(stream, "_buffer", None):
            return True
        writer = getattr(connection, "_writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def _hiredis_reader(self) -> Any:
        """The hiredis Reader of the subscription's connection (redis[hiredis] is a dependency; redis-py 5-7
        keep it at connection._parser._reader), or None with redis-py's own parser."""
        parser = getattr(self.pubsub.connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        return reader if hasattr(reader, "has_data") else None

    async def snapshot(self) -> Snapshot:
        """The full desired state in one MULTI/EXEC."""
        pipe = self.client.pipeline(transaction=True)
        queue_snapshot(pipe, self.keys)
        return parse_snapshot(await pipe.execute())

    async def release_label(self, release_id: str) -> str:
        """The label in the release's metadata (`HGET <ns>:releases <id>`), or the id when there is none."""
        raw = await cast(Awaitable[bytes | None], self.client.hget(self.keys.releases, release_id))
        if raw is None:
            return release_id
        try:
            meta = load_json(raw)
        except ProtocolError as err:
            log.warning("release %s has metadata this agent cannot read (%s); using its id as label", release_id, err)
            return release_id
        label = meta.get("label") if isinstance(meta, dict) else None
        return label if isinstance(label, str) and label else release_id

    async def sync_clock(self, samples: int = CLOCK_SAMPLES) -> float:
        """Redis' clock (TIME); also keeps the offset to ours, for acknowledgements between heartbeats and for
        switch_at deadlines. The offset is taken at the midpoint of the shortest round trip of the last
        CLOCK_WINDOW seconds (as NTP filters its samples): a slow reply (a busy core) puts the midpoint off by up
        to half its round trip, and a single sync's best of three can still be a slow one."""
        for _ in range(samples):
            sent = time.time()
            seconds, micros = await self.client.time()
            received = time.time()
            self._clock_samples.append((time.monotonic(), received - sent,
                                        float(seconds) + int(micros) / 1e6 - (sent + received) / 2))
        horizon = time.monotonic() - CLOCK_WINDOW
        while self._clock_samples[0][0] < horizon:
            self._clock_samples.popleft()
        self._clock_offset = min(self._clock_samples, key=lambda sample: sample[1])[2]
        return self.server_now()

    def server_now(self) -> float:
        """Redis' clock as estimated from the last TIME, without a round trip."""
        return time.time() + self._clock_offset

    async def write_status(self, value: str) -> None:
        """SET the host's status key: one value replaced whole (the only write the agent's ACL user has)."""
        await self.client.set(self.status_key, value)

    async def publish_probe(self, token: bytes) -> None:
        await self.client.publish(self.probe_channel, token)

    async def close(self) -> None:
        """Drop both connections without waiting on a peer that may be gone (a half-open socket)."""
        try:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        except Exception as err:  # closing a dead connection can fail any way; the session is over anyway
            log.debug("closing the subscription: %s", err)
        try:
            await self.client.aclose()
        except Exception as err:
            log.debug("closing the client: %s", err)
