"""Reading what the agents report: the fleet's status and waiting for acknowledgements.

Agents SET their status (`NS:host:<host>`, one JSON value) right after every
switch and apply, and on a heartbeat; an agent from before that key writes the
hash `NS:status:<host>`, read when the new key is missing (docs/upgrading.md).
`seen_at` comes from Redis' own clock, so a host is silent when Redis' clock
says its last heartbeat is older than three heartbeats — no clock on a host or
the controller is trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from ..protocol import HostStatus
from .store import Store

POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class HostView:
    """One host as `fleet`/`fab status` shows it."""

    host: str
    status: HostStatus | None  # None: the agent never reported
    target: str | None  # the release this host should serve
    silent: bool
    lagging: bool

    @property
    def degraded(self) -> bool:
        """The agent itself says it does not serve all of the desired state (a write failed, no snapshot yet,
        Redis unreadable): it may acknowledge nothing new, so it is as unhealthy as a lagging host."""
        return self.status is not None and self.status.state != "ready"

    @property
    def healthy(self) -> bool:
        return self.status is not None and not self.silent and not self.lagging and not self.degraded

    @property
    def problem(self) -> str:
        """Why the host is unhealthy, "" when it is not. A silent host's fields are stale, so silence comes
        first; a degraded host shows the agent's own error, which says more than the release it serves."""
        if self.status is None:
            return "never reported (is sync-agent installed and running?)"
        if self.silent:
            return f"silent (no heartbeat for more than {3 * self.status.heartbeat:.0f}s)"
        lagging = f"serves {self.status.release or 'nothing'}, should serve {self.target}" if self.lagging else ""
        if self.degraded:
            why = self.status.error or "no error given (starting, before its first snapshot?)"
            return f"{self.status.state}: {why}" + (f"; {lagging}" if lagging else "")
        return lagging


def parse_status(raw: bytes | str | None, legacy: dict[Any, Any], now: float) -> HostStatus | None:
    """One host's status from its key (hostile input: an unreadable one is a degraded status naming why, seen
    now so that it is not taken for silence), else from the hash of an agent from before the key, else None."""
    if raw is not None:
        try:
            return HostStatus.from_json(raw)
        except ProtocolError as err:
            return HostStatus(state="degraded", error=f"unreadable status in Redis: {err}", seen_at=now)
    if not legacy:
        return None
    return HostStatus.from_hash({_text(name): _text(value) for name, value in legacy.items()})


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def read_statuses(store: Store, hosts: Iterable[str]) -> tuple[dict[str, HostStatus | None], float]:
    """Every host's status and Redis' clock, in one round trip."""
    names = list(hosts)
    pipe = store.client.pipeline(transaction=False)
    for host in names:  # read as bytes: what a host wrote need not be UTF-8, and must not fail the whole read
        pipe.execute_command("GET", store.keys.host(host), NEVER_DECODE=True)  # type: ignore[no-untyped-call]
        pipe.execute_command("HGETALL", store.keys.status(host), NEVER_DECODE=True)  # type: ignore[no-untyped-call]
    pipe.time()
    results = store.call(pipe.execute)
    seconds, micros = results[-1]
    now = float(seconds) + micros / 1e6
    statuses = {host: parse_status(results[2 * n], results[2 * n + 1], now) for n, host in enumerate(names)}
    return statuses, now


def forget_replaced_statuses(store: Store, hosts: Iterable[str]) -> list[str]:
    """Delete the status hash of an agent from before `NS:host:<host>` wherever that host's agent now reports on
    the new key; the hosts whose hash went. No agent can write the hash any more (its ACL user has SET on the new
    key only), so nothing comes back."""
    names = list(hosts)
    pipe = store.client.pipeline(transaction=False)
    for host in names:
        pipe.exists(store.keys.host(host), store.keys.status(host))
    both = [host for host, count in zip(names, store.call(pipe.execute), strict=True) if count == 2]
    if both:
        store.call(store.client.delete, *(store.keys.status(host) for host in both))
    return both


def fleet_view(store: Store, hosts: Iterable[str]) -> list[HostView]:
    """The fleet as the inventory names it: every host, silent and lagging ones flagged."""
    names = sorted(hosts)
    desired = store.desired()
    statuses, now = read_statuses(store, names)
    views = []
    for host in names:
        status = statuses[host]
        target = desired.target_for(host)
        silent = status is None or status.silent(now)
        lagging = status is not None and target is not None and status.release != target
        views.append(HostView(host, status, target, silent, lagging))
    return views


def _acknowledged(status: HostStatus | None, release: str | None, epoch: str, revision: int) -> bool:
    if status is None:
        return False
    if release is not None and status.release != release:
        return False
    return status.epoch == epoch and status.revision >= revision


def _why(status: HostStatus | None, release: str | None, now: float) -> str:
    if status is None:
        return "no status: the agent never reported"
    if status.silent(now):
        return f"silent: last heartbeat {now - status.seen_at:.0f}s ago (agent stopped or host down?)"
    detail = f"still on {status.release or 'nothing'} at revision {status.revision}"
    if release is not None and status.release != release:
        detail = f"serves {status.release or 'nothing'}, not {release}"
    return f"{detail}: {status.error}" if status.error else detail


def wait_for_acks(store: Store, hosts: Iterable[str], epoch: str, revision: int, release: str | None = None,
                  timeout: float = 30.0, check: Callable[[], None] | None = None) -> dict[str, str]:
    """Wait until every host reports the revision (and the release, if given); check (e.g. Hold.check, which
    raises once the deploy lock is lost) runs before each look.

    Returns the laggards, host → why, empty when everyone acknowledged.
    """
    pending = set(hosts)
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        statuses, now = read_statuses(store, sorted(pending))
        pending = {h for h, s in statuses.items() if not _acknowledged(s, release, epoch, revision)}
        if not pending:
            return {}
        if time.monotonic() >= deadline:
            return {host: _why(statuses[host], release, now) for host in sorted(pending)}
        time.sleep(POLL_INTERVAL)
