"""Rebuild a store from what the fleet holds: `fab recover` and `sync-agent recover`.

After Redis lost its data (or went back to a save the agents refuse), the hosts still hold the truth: each one's
`current` and `previous`, its staged releases, its data.json, its private data and the point its agent applied. A
recovery reads all of that over SSH, takes the data (public and private) of the host whose applied change is the
newest, the release every host serves (or the one named), and publishes it in one step as a new epoch whose
origin names the point it continues from. Agents follow such an epoch; what they serve does not change, so nothing
switches. docs/reliability.md, "Recovering a store", is the operator's side of it. Private values travel only in
the hosts' answers over SSH and into the store: the plan and the report name the private keys, never a value.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import HostFailures, RolloutFailed, UsageError
from ..protocol import validate_release_id
from ..snapshot import Point
from .datafile import check_apart, checked_values
from .hoststatus import wait_for_acks
from .inventory import Host
from .lock import default_holder
from .rollout import DEFAULT_ACK_TIMEOUT
from .session import Session, on_each, reading_answer_of, release_root
from .store import Change, release_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """What one web host holds, as its own `sync-agent status --data` reports it."""

    host: str
    current: str | None
    previous: str | None
    staged: list[str]
    applied: Point | None
    left: list[str]
    data: dict[str, Any] | None
    problem: str = ""  # why its applied point or data cannot be used
    private: dict[str, Any] | None = None  # its private data (None: an agent from before private data, or unreadable)

    @classmethod
    def from_answer(cls, host: str, answer: dict[str, Any]) -> Held:
        problems = []
        applied, left = None, []
        raw = answer.get("applied")
        if isinstance(raw, dict) and "error" in raw:
            problems.append(str(raw["error"]))
        elif raw is not None:
            applied = Point.from_json(raw)
            left = [str(e) for e in raw.get("left", [])]
        data = _object(answer.get("data"), "its data.json", problems)
        private = _object(answer.get("private"), "its private data", problems)
        return cls(host, answer.get("current"), answer.get("previous"), [str(r) for r in answer["staged"]],
                   applied, left, data, "; ".join(problems), private)


def _object(raw: Any, what: str, problems: list[str]) -> dict[str, Any] | None:
    """A data object of a host's answer; None (with the problem noted) for {"error": …} or anything not an object."""
    if isinstance(raw, dict) and set(raw) == {"error"}:
        problems.append(str(raw["error"]))
        return None
    if raw is not None and not isinstance(raw, dict):
        problems.append(f"{what} is not a JSON object")
        return None
    return raw


@dataclass
class RecoveryPlan:
    """What a recovery will publish, and why."""

    release: str
    history: list[str]
    data: dict[str, Any]
    source: str  # the host the data comes from
    continues_from: Point | None
    held: dict[str, Held] = field(default_factory=dict)
    store_before: Point | None = None  # what the store held before (None: empty)
    private: dict[str, Any] = field(default_factory=dict)  # from the same host; shown by name only

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "history": self.history, "keys": sorted(self.data),
                "private_keys": sorted(self.private),
                "data_from": self.source,
                "continues_from": self.continues_from.to_json() if self.continues_from else None,
                "store_before": self.store_before.to_json() if self.store_before else None,
                "hosts": {h: {"current": held.current, "applied": held.applied.to_json() if held.applied else None}
                          for h, held in sorted(self.held.items())}}

    def to_text(self) -> str:
        before = (f"replaces the store's {self.store_before}" if self.store_before
                  else "the store is empty")
        lines = [f"recovery: {before}; publishes a new epoch that continues from "
                 f"{self.continues_from or 'nothing (no host had applied a change)'}",
                 f"  release: {self.release} (history: {' -> '.join(self.history)})",
                 f"  data:    {len(self.data)} key(s) from {self.source}: {', '.join(sorted(self.data)[:10]) or '-'}"
                 + (" …" if len(self.data) > 10 else ""),
                 f"  private: {len(self.private)} key(s) from {self.source}: "
                 f"{', '.join(sorted(self.private)[:10]) or '-'}" + (" …" if len(self.private) > 10 else "")]
        for host, held in sorted(self.held.items()):
            lines.append(f"  {host}: serves {held.current or '-'}, applied {held.applied or '-'}")
        return "\n".join(lines)


def read_held(s: Session, host: Host) -> Held:
    answer = s.agent_json(host, "status", "--root", release_root(host), "--json", "--data")
    with reading_answer_of(host):
        return Held.from_answer(host.name, answer)


def _newer(a: Held, b: Held) -> bool:
    """Whether a's applied change is newer than b's: the same epoch compares revisions; an epoch one host left is
    older than the one it went to."""
    if a.applied is None:
        return False
    if b.applied is None:
        return True
    if a.applied.epoch == b.applied.epoch:
        return a.applied.revision > b.applied.revision
    return b.applied.epoch in a.left


def _newest(held: list[Held]) -> Held:
    best = held[0]
    for candidate in held[1:]:
        if _newer(candidate, best):
            best = candidate
    return best


def plan_recovery(s: Session, release: str | None = None) -> RecoveryPlan:
    """Read what every web host holds and decide what to publish; refuse (naming hosts) when they disagree on the
    release and none is named, or when the release or data cannot be had."""
    answers, failures = on_each(list(s.fleet.web), lambda host: read_held(s, host))
    if failures:
        raise HostFailures("cannot read what every web host holds, nothing was changed", failures,
                           "a recovery needs every web host; bring the missing ones back, or take them out of the "
                           "inventory")
    held = [answers[h.name] for h in s.fleet.web]
    if release is None:
        serving = Counter(h.current for h in held)
        if len(serving) != 1 or None in serving:
            raise HostFailures("the web hosts do not serve one release, nothing was changed",
                               {h.host: f"serves {h.current or 'nothing'}" for h in held},
                               "name the release to publish with --release ID (it must be staged on every host)")
        release = held[0].current
        assert release is not None
    validate_release_id(release)
    lacking = {h.host: "not staged" for h in held if release not in h.staged}
    if lacking:
        raise HostFailures(f"{release} is not staged on every web host, nothing was changed", lacking,
                           "choose a release every host has (`sync-agent status --root …` on a host lists them)")
    usable = [h for h in held if h.data is not None and not h.problem]
    if not usable:
        raise HostFailures("no web host has data this recovery can use, nothing was changed",
                           {h.host: h.problem or "no data.json" for h in held})
    source = _newest(usable)
    previous = Counter(h.previous for h in held if h.current == release and h.previous)
    history = [previous.most_common(1)[0][0], release] if previous else [release]
    if history[0] == release:
        history = [release]
    snapshot = s.store.snapshot()
    store_before = Point(snapshot.epoch, snapshot.revision, snapshot.head[1] if snapshot.head else None) \
        if snapshot.epoch is not None else None
    return RecoveryPlan(release, history, dict(source.data or {}), source.host, source.applied,
                        {h.host: h for h in held}, store_before, dict(source.private or {}))


def recover(s: Session, plan: RecoveryPlan, timeout: float = DEFAULT_ACK_TIMEOUT) -> Change:
    """Publish the plan as a new epoch under the deploy lock, then wait for every web host to take it."""
    with s.lock.held(default_holder("recover")) as hold:
        before = s.store.snapshot()
        if (before.epoch, before.revision) != ((plan.store_before.epoch, plan.store_before.revision)
                                               if plan.store_before else (None, 0)):
            raise UsageError("the store changed while the recovery was being prepared; run it again to see what it "
                             "would publish now")
        meta = s.store.release_metadata()
        metadata = {r: meta.get(r) or release_metadata("(recovered)") for r in plan.history}
        values = checked_values(plan.data, f"{plan.source}'s data.json")
        check_apart(plan.data, plan.private, f"{plan.source}'s data")
        secrets = checked_values(plan.private, f"{plan.source}'s private data", private=True)
        change = s.store.seed("recover", plan.continues_from, values, plan.release, plan.history, metadata,
                              replace=True, token=hold.token, private=secrets)
        laggards = wait_for_acks(s.store, s.web_names, change.epoch, change.revision, plan.release, timeout,
                                 hold.check)
        if laggards:
            raise RolloutFailed("the store was rebuilt, but not every host took it", laggards,
                                "`fab status` shows each host; an agent that is back takes it from the snapshot")
    return change


def confirm(plan: RecoveryPlan, yes: bool, ask: Callable[[str], str] = input) -> None:
    """Show nothing itself (the caller printed the plan); publish only on --yes or a "yes" typed at a terminal."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("a recovery replaces the store: pass --yes to publish what it shows (standard input is "
                         "not a terminal to ask on); nothing was changed")
    if ask("publish this as the store's new epoch? [y/N] ").strip().lower() not in ("y", "yes"):
        raise UsageError("recovery not confirmed; nothing was changed")
