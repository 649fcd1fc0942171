"""The `sync-agent` subcommands that run on the controller. Each opens a session (an inventory's fleet) or, for
what needs Redis alone, a store, runs one operation of the control plane, and returns its Report: the same
operation and output as the matching `fab` task."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..protocol import Keys, acl_setuser_line, acl_user
from ..report import Report
from . import reports, scaffold
from .rollout import abort, publish, rollback, rollout, sync_new_hosts
from .session import session
from .store import Store, connect
from .wheels import LOCK_FILE, build_wheels, update_lock


def _store(args: argparse.Namespace) -> Store:
    return Store(connect(args.redis, args.password_file), args.namespace)


def _hosts(value: str | None) -> list[str]:
    return [h for h in (value or "").split(",") if h]


def rollout_build(args: argparse.Namespace) -> Report:
    with session(args.inventory) as s:
        if args.abort:
            return reports.abort(*abort(s, timeout=args.timeout))
        if args.build:
            return reports.rollout(rollout(s, Path(args.build), label=args.label, canary=args.canary,
                                           timeout=args.timeout, check=args.check, init=args.init))
        return reports.new_hosts(sync_new_hosts(s, timeout=args.timeout, check=args.check, init=args.init),
                                 args.check)


def release_publish(args: argparse.Namespace) -> Report:
    with session(args.inventory) as s:
        return reports.rollout(publish(s, args.release, label=args.label, canary=args.canary, timeout=args.timeout))


def release_rollback(args: argparse.Namespace) -> Report:
    with session(args.inventory) as s:
        return reports.rollback(*rollback(s, args.to, timeout=args.timeout, request=args.request))


def recover(args: argparse.Namespace) -> Report:
    with session(args.inventory) as s:
        return reports.recover(s, args.release, args.yes, args.timeout, args.json)


def release_list(args: argparse.Namespace) -> Report:
    return reports.releases(_store(args))


def data_set(args: argparse.Namespace) -> Report:
    return reports.data_set(_store(args), args.key, args.value, args.private)


def data_get(args: argparse.Namespace) -> Report:
    return reports.data_get(_store(args), args.key, args.private)


def data_del(args: argparse.Namespace) -> Report:
    return reports.data_del(_store(args), args.key, args.private)


def data_export(args: argparse.Namespace) -> Report:
    return reports.data_export(_store(args), args.file, args.private)


def data_import(args: argparse.Namespace) -> Report:
    return reports.data_import(_store(args), args.file, args.replace)


def data_list(args: argparse.Namespace) -> Report:
    return reports.data_list(_store(args), args.private)


def fleet(args: argparse.Namespace) -> Report:
    return reports.status(_store(args), _hosts(args.hosts))


def change_log(args: argparse.Namespace) -> Report:
    return reports.change_log(_store(args), args.limit)


def lock(args: argparse.Namespace) -> Report:
    return reports.lock(_store(args), args.namespace, args.force)


def acl(args: argparse.Namespace) -> Report:
    user, rules = acl_user(Keys(args.namespace), None if args.publisher else args.host)
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    return Report({"user": user, "rules": rules}, acl_setuser_line(user, rules, password))


def wheels_lock(args: argparse.Namespace) -> Report:
    lock = update_lock()
    versions = {name: entry["version"] for name, entry in lock["packages"].items()}
    return Report(lock, f"locked {', '.join(f'{n}=={v}' for n, v in versions.items())} for "
                        f"{len(lock['platforms'])} platforms in {LOCK_FILE}")


def init(args: argparse.Namespace) -> Report:
    result = scaffold.init(Path(args.directory), env=args.env, app=args.app, force=args.force)
    return Report(result.to_json(), result.to_text())


def wheels(args: argparse.Namespace) -> Report:
    result = build_wheels(Path(args.dest) if args.dest else None, args.python, args.machine)
    return Report({"changed": result.changed, "directory": str(result.directory), "files": result.files},
                  "\n".join(sorted(result.files)))
