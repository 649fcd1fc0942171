"""The `sync-agent` subcommands that run on the controller. Each opens a session (an inventory's fleet) or, for
what needs Redis alone, a store, runs one operation of the control plane, and prints its Report: the same
operation and output as the matching `fab` task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..protocol import Keys, acl_setuser_line, acl_user
from . import reports
from .reports import Report
from .rollout import publish, rollback, rollout, sync_new_hosts
from .session import session
from .store import Store, connect
from .wheels import build_wheels


def _print(args: argparse.Namespace, report: Report) -> int:
    if report.warning:
        print(report.warning, file=sys.stderr)
    out = report.render(getattr(args, "json", False))
    if out:
        print(out)
    if report.failure:
        print(f"sync-agent: {report.failure}", file=sys.stderr)
    return report.exit_code


def _store(args: argparse.Namespace) -> Store:
    return Store(connect(args.redis, args.password_file), args.namespace)


def _hosts(value: str | None) -> list[str]:
    return [h for h in (value or "").split(",") if h]


def rollout_build(args: argparse.Namespace) -> int:
    with session(args.inventory) as s:
        if args.build:
            result = rollout(s, Path(args.build), label=args.label, canary=args.canary, timeout=args.timeout,
                             check=args.check)
            return _print(args, reports.rollout(result))
        return _print(args, reports.new_hosts(sync_new_hosts(s, timeout=args.timeout, check=args.check),
                                              args.check))


def release_publish(args: argparse.Namespace) -> int:
    with session(args.inventory) as s:
        result = publish(s, args.release, label=args.label, canary=args.canary, timeout=args.timeout)
    return _print(args, reports.rollout(result))


def release_rollback(args: argparse.Namespace) -> int:
    with session(args.inventory) as s:
        release, revision = rollback(s, args.to, timeout=args.timeout)
    return _print(args, reports.rollback(release, revision))


def release_list(args: argparse.Namespace) -> int:
    return _print(args, reports.releases(_store(args)))


def data_set(args: argparse.Namespace) -> int:
    return _print(args, reports.data_set(_store(args), args.key, args.value))


def data_get(args: argparse.Namespace) -> int:
    return _print(args, reports.data_get(_store(args), args.key))


def data_del(args: argparse.Namespace) -> int:
    return _print(args, reports.data_del(_store(args), args.key))


def data_list(args: argparse.Namespace) -> int:
    return _print(args, reports.data_list(_store(args)))


def fleet(args: argparse.Namespace) -> int:
    return _print(args, reports.status(_store(args), _hosts(args.hosts)))


def lock(args: argparse.Namespace) -> int:
    return _print(args, reports.lock(_store(args), args.namespace, args.force))


def acl(args: argparse.Namespace) -> int:
    user, rules = acl_user(Keys(args.namespace), None if args.publisher else args.host)
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    return _print(args, Report({"user": user, "rules": rules}, acl_setuser_line(user, rules, password)))


def wheels(args: argparse.Namespace) -> int:
    result = build_wheels(Path(args.source), Path(args.dest), args.python, args.machine)
    return _print(args, Report({"changed": result.changed, "directory": str(result.directory), "files": result.files},
                               "\n".join(sorted(result.files))))

