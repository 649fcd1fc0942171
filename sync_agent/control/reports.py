"""What each control-plane operation prints (a sync_agent.report.Report), written once for both front ends: `fab`
tasks and `sync-agent` subcommands run the same operation and print the same Report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT_UNHEALTHY, UsageError
from ..fsutil import atomic_write
from ..report import Report
from . import datafile
from . import recover as recovery
from .hoststatus import fleet_view
from .lock import DeployLock, default_holder
from .records import RolloutRecord
from .rollout import RolloutResult
from .session import Session
from .store import Change, Store


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _change(change: Change, what: str, **data: Any) -> Report:
    return Report({**data, "epoch": change.epoch, "revision": change.revision},
                  f"{what} at revision {change.revision}")


# --- releases ---------------------------------------------------------------------------------------


def rollout(result: RolloutResult) -> Report:
    return Report(result.to_json(), result.to_text())


def new_hosts(hosts: list[str], check: bool) -> Report:
    verb = "would bring" if check else "brought"
    text = (f"{verb} {', '.join(hosts)} up to the current release" if hosts
            else "every web host has the current release")
    return Report({"changed": bool(hosts), "hosts": hosts, "check_mode": check}, text)


def rollback(release: str, revision: int) -> Report:
    """A rollback's outcome (also when a lost reply was answered by its first outcome)."""
    return Report({"changed": True, "release": release, "revision": revision},
                  f"every host is on {release} (revision {revision})")


def releases(store: Store) -> Report:
    """The activation history with label, who and when, oldest first; * marks the live release."""
    history = store.history()
    meta = store.release_metadata()
    rows = [{"release": release, "current": index == history.position,
             "label": meta.get(release, {}).get("label", ""), "who": meta.get(release, {}).get("who", ""),
             "when": meta.get(release, {}).get("when", "")} for index, release in enumerate(history.releases)]
    lines = [f"{'*' if r['current'] else ' '} {r['release']}  {r['label']:<24} {r['who']:<24} {r['when']}"
             for r in rows]
    return Report(rows, "\n".join(lines) or "no release was ever published")


def prune(removed: dict[str, list[str]]) -> Report:
    lines = [f"{host}: removed {', '.join(ids) or 'nothing'}" for host, ids in sorted(removed.items())]
    return Report(removed, "\n".join(lines))


# --- the fleet --------------------------------------------------------------------------------------


STATUS_LOG_ENTRIES = 10  # the newest entries of the record of changes that `status --json` carries


def status(store: Store, hosts: list[str]) -> Report:
    """One row per host: release and its label, revision, agent state, how long ago it was seen, its problem; an
    unfinished rollout; with --json also the newest changes. Exit 5 while a host is silent, lagging or degraded,
    or a rollout is unfinished."""
    meta = store.release_metadata()
    unfinished = store.unfinished_rollout()
    now = store.server_time()
    rows = []
    for view in fleet_view(store, hosts):
        st = view.status
        rows.append({
            "host": view.host, "release": st.release if st else None,
            "label": meta.get(st.release, {}).get("label") if st and st.release else None,
            "revision": st.revision if st else None, "state": st.state if st else None,
            "seen": f"{now - st.seen_at:.0f}s ago" if st else None, "target": view.target,
            "healthy": view.healthy, "problem": view.problem or (st.error if st else ""),
        })
    text = "\n".join(
        f"{r['host']:<14} {r['release'] or '-':<18} {r['label'] or '':<16} rev {r['revision'] or '-':<6} "
        f"{r['state'] or '-':<9} seen {r['seen'] or '-':<8} {r['problem']}" for r in rows)
    data = {"hosts": rows, "rollout": unfinished.to_json() if unfinished else None,
            "log": [entry.to_json() for entry in store.changes(STATUS_LOG_ENTRIES)]}
    unhealthy = [f"{r['host']} ({r['problem']})" for r in rows if not r["healthy"]]
    failures = [f"{len(unhealthy)} host(s) unhealthy: {'; '.join(unhealthy)}"] if unhealthy else []
    if unfinished:
        failures.append(f"an {unfinished.to_text()}")
        text += f"\n{unfinished.to_text()}"
    if failures:
        return Report(data, text, EXIT_UNHEALTHY, failure="; ".join(failures))
    return Report(data, text)


def change_log(store: Store, limit: int) -> Report:
    """The record of changes, newest first: who changed what and when, as part of which operation."""
    if limit < 1:
        raise UsageError("--limit must be at least 1")
    entries = store.changes(limit)
    return Report([entry.to_json() for entry in entries], "\n".join(entry.to_text() for entry in entries)
                  or "no change is recorded")


def abort(record: RolloutRecord | None, where: str) -> Report:
    if record is None:
        return Report({"changed": False, "aborted": None}, "no rollout is unfinished; nothing to abort")
    return Report({"changed": True, "aborted": record.to_json(), "where": where},
                  f"aborted the rollout of {record.release}: {where}")


def lock(store: Store, namespace: str, force: bool) -> Report:
    """Who holds the deploy lock; with force, break a dead holder's lock (and warn, naming it)."""
    deploy_lock = DeployLock(store.client, namespace)
    if force:
        previous = deploy_lock.break_lock(default_holder("lock --force"))
        warning = f"warning: broke the deploy lock held by {previous}" if previous else ""
        return Report({"broken": previous or None}, "the deploy lock is free", warning=warning)
    info = deploy_lock.info()
    text = f"held by {info.holder}, expires in {info.expires_in:.0f}s" if info.holder else "the deploy lock is free"
    return Report({"holder": info.holder or None, "expires_in": info.expires_in}, text)


# --- shared data ------------------------------------------------------------------------------------


def data_set(store: Store, key: str, value: str, private: bool = False) -> Report:
    what = f"{key} set" + (" (private)" if private else "")
    return _change(store.data_set(key, value, private), what, key=key, private=private)


def data_get(store: Store, key: str, private: bool = False) -> Report:
    value = store.data_get(key, private)
    return Report(value, _value(value))


def data_del(store: Store, key: str, private: bool = False) -> Report:
    change = store.data_del(key, private)
    kind = "private key " if private else ""
    if not change.revision:
        return Report({"key": key, "deleted": False, "private": private}, f"{kind}{key} was not set")
    return _change(change, f"{kind}{key} deleted", key=key, deleted=True, private=private)


def data_list(store: Store, private: bool = False) -> Report:
    """Every public key and value, and the private keys by name; with private, their values too.

    --json: without private, {key: value} of the public keys (as before private keys existed); with private,
    {"data": {…}, "private": {…}}."""
    data = store.data_list()
    lines = [f"{k} = {_value(v)}" for k, v in data.items()]
    if private:
        secrets = store.private_list()
        lines += [f"{k} = {_value(v)} (private)" for k, v in secrets.items()]
        return Report({"data": data, "private": secrets}, "\n".join(sorted(lines)) or "no data is set")
    names = store.private_keys()
    lines += [f"{k} (private; --private shows its value)" for k in names]
    return Report(data, "\n".join(sorted(lines)) or "no data is set")


def data_export(store: Store, file: str | None = None, private: bool = False) -> Report:
    """Every key and value as a file `data import` reads (on stdout without file); with private, the private keys
    and values too."""
    document = datafile.export_document(store, private)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    skipped = document["skipped"]
    warnings = [f"warning: not exported, their stored values are ones agents refuse: {', '.join(skipped)}"] \
        if skipped else []
    if document.get("private_left_out"):
        warnings.append(f"note: {document['private_left_out']} private key(s) not exported; --private exports them "
                        "(the file then holds their values)")
    warning = "\n".join(warnings)
    if file is None:
        return Report(document, text.rstrip("\n"), warning=warning)
    try:
        atomic_write(file, text.encode(), mode=0o600)
    except OSError as err:
        raise UsageError(f"cannot write {file}: {err.strerror}") from err
    summary = {k: v for k, v in document.items() if k not in ("data", "private")} | {
        "keys": len(document["data"]), "private_keys": len(document.get("private", {})), "file": file}
    return Report(summary, f"exported {len(document['data'])} key(s) at revision {document['revision']} to {file}",
                  warning=warning)


def data_import(store: Store, file: str, replace: bool = False) -> Report:
    """Make the store hold what an export file holds (with replace: and no other key)."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as err:
        raise UsageError(f"cannot read {file}: {err.strerror}") from err
    result = datafile.import_values(store, datafile.parse_document(text, file), replace)
    private = (f", {len(result.private_set)} private key(s) set, {len(result.private_deleted)} deleted"
               if result.private_set or result.private_deleted else "")
    text = (f"imported {file}: {len(result.set)} key(s) set, {len(result.deleted)} deleted{private}, "
            f"{result.unchanged} unchanged" + (f"; at revision {result.revision}" if result.revision else "")
            + ("; the store was empty: this made its new epoch" if result.new_epoch else ""))
    return Report(vars(result), text)


# --- recovery ---------------------------------------------------------------------------------------


def recover(s: Session, release: str | None, yes: bool, timeout: float, as_json: bool) -> Report:
    """Show what a recovery would publish, ask (or --yes), publish it, wait for every web host."""
    plan = recovery.plan_recovery(s, release)
    if not as_json:
        print(plan.to_text(), flush=True)
    recovery.confirm(plan, yes)
    change = recovery.recover(s, plan, timeout)
    return Report({**plan.to_json(), "epoch": change.epoch, "revision": change.revision},
                  f"recovered: epoch {change.epoch} holds {plan.release} and {len(plan.data)} key(s) from "
                  f"{plan.source}; every web host took it")


