"""frontfleet's day-to-day commands: `fab rollout`, `fab rollback`, `fab status`, `fab data-set` …

Thin tasks: each parses its arguments, calls `sync_agent.control`, and prints.
Hosts come from the Ansible inventory that deploy.yml uses ($ANSIBLE_INVENTORY,
else ansible.cfg's), read, reached and tunnelled by the same code as the
release play. Every task takes --json for pipelines.
"""

from __future__ import annotations

import json as jsonlib
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from fabric import task
from invoke.exceptions import Exit

from sync_agent import control
from sync_agent.errors import EXIT_UNHEALTHY, FrontfleetError
from sync_agent.progress import RichProgress


def _run(json_out: bool, action: Callable[[control.Session], tuple[Any, str]], inventory: str | None = None) -> None:
    """Open a session, run the action, print JSON or text; a FrontfleetError becomes a clean exit."""
    try:
        with control.session(inventory) as s:
            data, text = action(s)
    except FrontfleetError as err:
        if json_out:
            print(jsonlib.dumps({"error": str(err)}))
        raise Exit(f"fab: {err}", code=err.exit_code) from err
    print(jsonlib.dumps(data, indent=2, sort_keys=True, default=str) if json_out else text)


@task(help={"build": "the build folder, e.g. dist/", "label": "release label (default: git describe)",
            "canary": "switch this many hosts first", "timeout": "seconds to wait for acknowledgements",
            "check": "say what would be sent and switched; change nothing",
            "json": "print JSON", "inventory": "Ansible inventory (default: $ANSIBLE_INVENTORY or ansible.cfg's)"})
def rollout(c, build, label=None, canary=0, timeout=30.0, check=False, json=False, inventory=None):
    """Stage a build on every web host (only what each lacks), then switch the whole fleet to it at once."""
    progress = None if json or check or not sys.stdout.isatty() else RichProgress()

    def act(s: control.Session) -> tuple[Any, str]:
        with progress or nullcontext():
            result = control.rollout(s, Path(build), label=label, canary=int(canary), timeout=float(timeout),
                                     check=bool(check), progress=progress)
        if progress:
            progress.summary(result)
        return result.to_json(), result.to_text()

    _run(json, act, inventory)


@task(help={"to": "a staged release to go to (default: one step back)", "json": "print JSON",
            "inventory": "Ansible inventory"})
def rollback(c, to=None, json=False, inventory=None):
    """Go one step back in the activation history (no transfer), or --to any staged release."""

    def act(s: control.Session) -> tuple[Any, str]:
        release, revision = control.rollback(s, to)
        return {"release": release, "revision": revision}, f"every host is on {release} (revision {revision})"

    _run(json, act, inventory)


@task(help={"json": "print JSON", "inventory": "Ansible inventory"})
def releases(c, json=False, inventory=None):
    """The activation history, with label, who and when; * marks the live release."""

    def act(s: control.Session) -> tuple[Any, str]:
        rows = control.release_list(s)
        lines = [f"{'*' if r['current'] else ' '} {r['release']}  {r['label']:<24} {r['who']:<24} {r['when']}"
                 for r in rows]
        return rows, "\n".join(lines) or "no release was ever published"

    _run(json, act, inventory)


@task(help={"keep": "releases to keep per host", "json": "print JSON", "inventory": "Ansible inventory"})
def prune(c, keep=None, json=False, inventory=None):
    """Remove old releases on every host; never current, previous, or the next rollback target."""

    def act(s: control.Session) -> tuple[Any, str]:
        removed = control.prune(s, int(keep) if keep else None)
        lines = [f"{host}: removed {', '.join(ids) or 'nothing'}" for host, ids in sorted(removed.items())]
        return removed, "\n".join(lines)

    _run(json, act, inventory)


@task(help={"json": "print JSON", "inventory": "Ansible inventory"})
def status(c, json=False, inventory=None):
    """The fleet: host, release, revision, agent state, last seen. Exit 5 while a host is silent, lagging or
    degraded (its agent reports an error, e.g. a write that failed)."""
    rows: list[dict[str, Any]] = []

    def act(s: control.Session) -> tuple[Any, str]:
        rows.extend(control.status_rows(s))
        return rows, RichProgress.status_table(rows) if sys.stdout.isatty() else _status_text(rows)

    _run(json, act, inventory)
    unhealthy = [f"{r['host']} ({r['problem']})" for r in rows if not r["healthy"]]
    if unhealthy:
        raise Exit(f"fab: {len(unhealthy)} host(s) unhealthy: {'; '.join(unhealthy)}", code=EXIT_UNHEALTHY)


def _status_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{r['host']:<14} {r['release'] or '-':<18} {r['label'] or '':<16} rev {r['revision'] or '-':<6} "
        f"{r['state'] or '-':<9} seen {r['seen'] or '-':<8} {r['problem']}" for r in rows)


@task(name="data-set", help={"key": "data key", "value": "a JSON value, e.g. true or '\"text\"'", "json": "print JSON"})
def data_set(c, key, value, json=False, inventory=None):
    """Set shared runtime data; every host has it within milliseconds."""
    _run(json, lambda s: _change(s.store.data_set(key, value), f"{key} set"), inventory)


@task(name="data-get", help={"key": "data key"})
def data_get(c, key, json=False, inventory=None):
    """Print a data key's JSON value."""

    def act(s: control.Session) -> tuple[Any, str]:
        value = s.store.data_get(key)
        return value, _dumps(value)

    _run(json, act, inventory)


@task(name="data-del", help={"key": "data key"})
def data_del(c, key, json=False, inventory=None):
    """Delete a data key on every host."""

    def act(s: control.Session) -> tuple[Any, str]:
        change = s.store.data_del(key)
        if not change.revision:
            return {"key": key, "deleted": False}, f"{key} was not set"
        return _change(change, f"{key} deleted")

    _run(json, act, inventory)


@task(name="data-list")
def data_list(c, json=False, inventory=None):
    """Every data key and its value."""

    def act(s: control.Session) -> tuple[Any, str]:
        data = s.store.data_list()
        return data, "\n".join(f"{k} = {_dumps(v)}" for k, v in data.items()) or "no data is set"

    _run(json, act, inventory)


@task(help={"force": "break a dead holder's lock (prints a warning naming it)"})
def lock(c, force=False, json=False, inventory=None):
    """Show who holds the deploy lock; --force breaks a dead holder's lock."""

    def act(s: control.Session) -> tuple[Any, str]:
        if force:
            previous = control.break_lock(s)
            if previous:
                print(f"warning: broke the deploy lock held by {previous}", file=sys.stderr)
            return {"broken": previous or None}, "the deploy lock is free"
        info = s.lock.info()
        text = f"held by {info.holder}, expires in {info.expires_in:.0f}s" if info.holder else "the deploy lock is free"
        return {"holder": info.holder or None, "expires_in": info.expires_in}, text

    _run(json, act, inventory)


def _change(change: Any, what: str) -> tuple[Any, str]:
    return {"epoch": change.epoch, "revision": change.revision}, f"{what} at revision {change.revision}"


def _dumps(value: Any) -> str:
    return jsonlib.dumps(value, ensure_ascii=False)
