"""frontfleet's day-to-day commands: `fab rollout`, `fab rollback`, `fab status`, `fab data-set` …

Thin tasks: each parses its arguments, runs one operation of `sync_agent.control` on a session, and prints its
Report, the same operation and output as the matching `sync-agent` subcommand. Hosts come from the Ansible
inventory that deploy.yml uses ($ANSIBLE_INVENTORY, else ansible.cfg's), read, reached and tunnelled by the same
code as the release play. Every task takes --json for pipelines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from sync_agent import control
from sync_agent.control import reports
from sync_agent.control.progress import RichProgress
from sync_agent.errors import EXIT_USAGE, FrontfleetError
from sync_agent.report import Report, error_report

INVENTORY_HELP = "Ansible inventory (default: $ANSIBLE_INVENTORY, else ansible.cfg's)"


def _run(json_out: bool, action: Callable[[control.Session], Report], inventory: str | None = None) -> None:
    """Open a session, run the action, print its Report; a failure becomes a clean exit with its code."""
    try:
        with control.session(inventory) as s:
            report = action(s)
    except FrontfleetError as err:
        report = error_report(err)
    report.emit(json_out)
    if report.exit_code:
        raise Exit(f"fab: {report.failure}", code=report.exit_code)


@task(help={"build": "the build folder, e.g. dist/", "label": "release label (default: git describe)",
            "canary": "switch this many hosts first", "timeout": "seconds to wait for acknowledgements",
            "check": "say what would be sent and switched; change nothing",
            "abort": "put back what an unfinished rollout (killed, its lock lost) switched",
            "json": "print JSON", "inventory": INVENTORY_HELP})
def rollout(c, build=None, label=None, canary=0, timeout=30.0, check=False, abort=False, json=False,
            inventory=None):
    """Stage a build on every web host (only what each lacks), then switch the whole fleet to it at once."""
    if abort:
        _run(json, lambda s: reports.abort(*control.abort(s, float(timeout))), inventory)
        return
    if not build:
        raise Exit("fab: rollout needs --build DIR (the build folder), or --abort", code=EXIT_USAGE)
    progress = None if json or check or not sys.stdout.isatty() else RichProgress()

    def act(s: control.Session) -> Report:
        with progress or nullcontext():
            result = control.rollout(s, Path(build), label=label, canary=int(canary), timeout=float(timeout),
                                     check=bool(check), progress=progress)
        if progress:
            progress.summary(result)
        return reports.rollout(result)

    _run(json, act, inventory)


@task(help={"release": "a release id staged on every web host (`fab releases`)", "label": "release label",
            "canary": "switch this many hosts first", "timeout": "seconds to wait for acknowledgements",
            "json": "print JSON", "inventory": INVENTORY_HELP})
def publish(c, release, label=None, canary=0, timeout=30.0, json=False, inventory=None):
    """Make a release already staged on every web host the live one, with a rollout's checks and undo."""
    _run(json, lambda s: reports.rollout(control.publish(s, release, label=label, canary=int(canary),
                                                         timeout=float(timeout))), inventory)


@task(help={"to": "a staged release to go to (default: one step back)",
            "request": "the request id an unknown outcome printed: made at most once", "json": "print JSON",
            "inventory": INVENTORY_HELP})
def rollback(c, to=None, request=None, json=False, inventory=None):
    """Go one step back in the activation history (no transfer), or --to any staged release."""
    _run(json, lambda s: reports.rollback(*control.rollback(s, to, request=request)), inventory)


@task(help={"json": "print JSON", "inventory": INVENTORY_HELP})
def releases(c, json=False, inventory=None):
    """The activation history, with label, who and when; * marks the live release."""
    _run(json, lambda s: reports.releases(s.store), inventory)


@task(help={"keep": "releases to keep per host", "json": "print JSON", "inventory": INVENTORY_HELP})
def prune(c, keep=None, json=False, inventory=None):
    """Remove old releases on every host; never current, previous, or the next rollback target."""
    _run(json, lambda s: reports.prune(control.prune(s, int(keep) if keep else None)), inventory)


@task(help={"json": "print JSON", "inventory": INVENTORY_HELP})
def status(c, json=False, inventory=None):
    """The fleet: host, release, revision, agent state, last seen. Exit 5 while a host is silent, lagging or
    degraded (its agent reports an error, e.g. a write that failed)."""

    def act(s: control.Session) -> Report:
        report = reports.status(s.store, s.web_names)
        if json or not sys.stdout.isatty():
            return report
        return Report(report.data, RichProgress.status_table(report.data), report.exit_code, failure=report.failure)

    _run(json, act, inventory)


PRIVATE_HELP = "a private key: reaches the hosts' private templates (R/private/), never a served byte"


@task(name="data-set", help={"key": "data key", "value": "a JSON value, e.g. true or '\"text\"'",
                             "private": PRIVATE_HELP, "json": "print JSON", "inventory": INVENTORY_HELP})
def data_set(c, key, value, private=False, json=False, inventory=None):
    """Set shared runtime data; every host has it within milliseconds."""
    _run(json, lambda s: reports.data_set(s.store, key, value, bool(private)), inventory)


@task(name="data-get", help={"key": "data key", "private": "a private key's value", "json": "print JSON",
                             "inventory": INVENTORY_HELP})
def data_get(c, key, private=False, json=False, inventory=None):
    """Print a data key's JSON value."""
    _run(json, lambda s: reports.data_get(s.store, key, bool(private)), inventory)


@task(name="data-del", help={"key": "data key", "private": "a private key", "json": "print JSON",
                             "inventory": INVENTORY_HELP})
def data_del(c, key, private=False, json=False, inventory=None):
    """Delete a data key on every host."""
    _run(json, lambda s: reports.data_del(s.store, key, bool(private)), inventory)


@task(name="data-list", help={"private": "also the private keys' values", "json": "print JSON",
                              "inventory": INVENTORY_HELP})
def data_list(c, private=False, json=False, inventory=None):
    """Every data key and its value; private keys by name only, unless --private."""
    _run(json, lambda s: reports.data_list(s.store, bool(private)), inventory)


@task(name="data-export", help={"file": "write it here (0600) instead of to stdout",
                                "private": "also the private keys and values (the file then holds them)",
                                "json": "print JSON", "inventory": INVENTORY_HELP})
def data_export(c, file=None, private=False, json=False, inventory=None):
    """Every data key and value, as a file `fab data-import` reads (exact JSON values)."""
    _run(json, lambda s: reports.data_export(s.store, file, bool(private)), inventory)


@task(name="data-import", help={"file": "an export file (or - for stdin)", "replace": "also delete the keys the file "
                                "does not hold", "json": "print JSON", "inventory": INVENTORY_HELP})
def data_import(c, file, replace=False, json=False, inventory=None):
    """Make the shared data what an export file holds: checked whole first, then one change per key that differs."""
    _run(json, lambda s: reports.data_import(s.store, file, bool(replace)), inventory)


@task(help={"release": "the release to publish (default: the one every web host serves)",
            "yes": "publish without asking", "timeout": "seconds to wait for acknowledgements",
            "json": "print JSON", "inventory": INVENTORY_HELP})
def recover(c, release=None, yes=False, timeout=30.0, json=False, inventory=None):
    """Rebuild a wiped (or distrusted) store from what the web hosts hold: release, history, data."""
    _run(json, lambda s: reports.recover(s, release, bool(yes), float(timeout), bool(json)), inventory)


@task(name="log", help={"limit": "how many entries, newest first", "json": "print JSON",
                        "inventory": INVENTORY_HELP})
def change_log(c, limit=50, json=False, inventory=None):
    """Who changed what and when: data keys, releases, rollbacks, recoveries, lock breaks."""
    _run(json, lambda s: reports.change_log(s.store, int(limit)), inventory)


@task(help={"force": "break a dead holder's lock (prints a warning naming it)", "json": "print JSON",
            "inventory": INVENTORY_HELP})
def lock(c, force=False, json=False, inventory=None):
    """Show who holds the deploy lock; --force breaks a dead holder's lock."""
    _run(json, lambda s: reports.lock(s.store, s.fleet.namespace, bool(force)), inventory)

# What a fabfile's `from sync_agent.control.fabtasks import *` brings: the tasks, nothing else.
__all__ = ["change_log", "data_del", "data_export", "data_get", "data_import", "data_list", "data_set", "lock", "prune",
           "publish", "recover", "releases", "rollback", "rollout", "status"]
