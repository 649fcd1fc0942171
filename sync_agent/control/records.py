"""What the store records about the operations on it: the activation history, the record of an unfinished
rollout (what `fab status` names and `fab rollout --abort` undoes) and the record of changes (`fab log`).

The scripts write them (lua/rollout.lua, lua/common.lua's note); this module reads them. What it reads is input
like any other: an entry it cannot read is shown as unreadable, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..protocol import FLEET_FIELD, OVERRIDE_PREFIX, Desired


@dataclass(frozen=True)
class History:
    releases: list[str]
    position: int  # index of the fleet's current release, -1 when there is none

    @property
    def current(self) -> str | None:
        return self.releases[self.position] if self.position >= 0 else None

    @property
    def rollback_target(self) -> str | None:
        """The release `rollback` would go to next."""
        return self.releases[self.position - 1] if self.position >= 1 else None


def saved_state(desired: Desired, history: History) -> dict[str, Any]:
    """A desired state and history as the release script's "restore" takes them and a rollout record keeps them."""
    saved: dict[str, Any] = {"overrides": desired.overrides or {}, "history": history.releases,
                             "position": history.position}
    if desired.fleet:
        saved["fleet"] = desired.fleet
    return saved


def _when(at: object) -> str:
    if not isinstance(at, int | float) or isinstance(at, bool):
        return "?"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout that has switched hosts and not finished: what it moves to, where it is, where it came from."""

    id: str
    release: str
    phase: str
    back_to: dict[str, Any]  # saved_state() of the fleet before the rollout's first switch
    started: float = 0.0
    during: str = ""  # the lock holder that wrote it: "rollout of X by user@host pid N"

    @property
    def back_to_state(self) -> tuple[Desired, History]:
        """(desired, history) to put back; validated like any desired state read from the store."""
        saved = self.back_to
        raw = {f"{OVERRIDE_PREFIX}{host}": str(release) for host, release in saved.get("overrides", {}).items()}
        if saved.get("fleet"):
            raw[FLEET_FIELD] = str(saved["fleet"])
        return Desired.from_hash(raw), History([str(r) for r in saved.get("history", [])],
                                               int(saved.get("position", -1)))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "release": self.release, "phase": self.phase, "back_to": self.back_to,
                "started": self.started, "during": self.during}

    @classmethod
    def from_json(cls, raw: str) -> RolloutRecord:
        try:
            body = json.loads(raw)
            return cls(str(body["id"]), str(body["release"]), str(body["phase"]), dict(body["back_to"]),
                       float(body.get("started", 0)), str(body.get("during", "")))
        except (ValueError, KeyError, TypeError) as err:
            return cls("", "?", f"unreadable ({type(err).__name__})", {})

    def to_text(self) -> str:
        back = self.back_to.get("fleet") or "no release"
        return (f"unfinished rollout of {self.release} (phase {self.phase}, started {_when(self.started)}, "
                f"{self.during or 'holder unknown'}): `fab rollout --abort` puts {back} back")


def unfinished_message(record: RolloutRecord) -> str:
    return (f"an {record.to_text()}; nothing was changed. Abort it first (it may have switched some hosts), "
            "then roll out again")


@dataclass(frozen=True)
class ChangeEntry:
    """One line of the record of changes: who did what, when, as part of which operation."""

    what: str
    at: float | None
    who: str
    detail: dict[str, Any] = field(default_factory=dict)  # key, release, hosts, releases, holder, rev, epoch, id

    @classmethod
    def from_json(cls, raw: str) -> ChangeEntry:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as err:
            return cls(f"unreadable entry ({type(err).__name__})", None, "?")
        at = body.pop("at", None)
        return cls(str(body.pop("what", "?")), at if isinstance(at, int | float) else None,
                   str(body.pop("who", "?")), body)

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "when": _when(self.at) if self.at is not None else None, "who": self.who,
                **self.detail}

    def to_text(self) -> str:
        d = self.detail
        subject = d.get("key") or d.get("release") or d.get("holder") or ", ".join(d.get("releases") or []) or ""
        hosts = f" on {', '.join(d['hosts'])}" if d.get("hosts") else ""
        rev = f" rev {d['rev']}" if "rev" in d else ""
        during = f"  [{d['during']}]" if d.get("during") else ""
        return f"{_when(self.at) if self.at is not None else '?':<25} {self.who:<24} {self.what} {subject}{hosts}" \
               f"{rev}{during}".rstrip()
