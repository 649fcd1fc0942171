"""`sync-agent`: thin argument parsing over the package. Output and exit codes live here, logic does not."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, FrontfleetError, UsageError
from .protocol import Keys, acl_setuser_line, acl_user

NAMESPACE_ENV = "FRONTFLEET_NAMESPACE"
DEFAULT_NAMESPACE = "frontfleet"

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print data as JSON with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    elif text:
        print(text)


def _store(args: argparse.Namespace) -> Any:
    from .store import Store, connect

    return Store(connect(args.redis, args.password_file), args.namespace)


# --- host side --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .service import main as run_agent

    return run_agent(args.config)


def cmd_manifest(args: argparse.Namespace) -> int:
    from .manifest import build_manifest

    print(json.dumps(build_manifest(Path(args.dir)).to_json(), indent=None if args.compact else 2))
    return EXIT_OK


def _read_manifest(source: str) -> Any:
    from .manifest import Manifest

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as err:
        raise UsageError(f"cannot read the manifest {source}: {err.strerror}") from err
    try:
        return Manifest.from_json(json.loads(text))
    except json.JSONDecodeError as err:
        raise UsageError(f"the manifest {source} is not JSON: {err}") from err


def cmd_verify(args: argparse.Namespace) -> int:
    from .releases import record_verified, verify

    manifest = _read_manifest(args.manifest)
    verify(Path(args.dir), manifest)
    text = f"{args.dir} matches release {manifest.release_id} ({len(manifest.entries)} files)"
    if args.root:
        record_verified(Path(args.root), manifest)
        text += f"; recorded in {args.root}/releases/{manifest.release_id}.manifest.json"
    _emit(args, {"release": manifest.release_id, "files": len(manifest.entries), "verified": True}, text)
    return EXIT_OK


def cmd_have(args: argparse.Namespace) -> int:
    from .releases import is_staged
    from .staging import lacking

    manifest = _read_manifest("-")
    root = Path(args.root)
    staged = is_staged(root, manifest.release_id)
    missing = [] if staged else lacking(root, manifest)
    print(json.dumps({"release": manifest.release_id, "staged": staged,
                      "missing": [entry.to_json() for entry in missing]}))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .staging import read_record, release_dir, write_stream

    manifest = read_record(Path(args.root), args.id)
    wanted = json.loads(sys.stdin.read() or "[]")
    if not isinstance(wanted, list) or not all(isinstance(sha, str) for sha in wanted):
        raise UsageError("export reads a JSON list of sha256 digests on stdin")
    write_stream(sys.stdout.buffer, manifest, release_dir(Path(args.root), args.id), wanted)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_check_url(args: argparse.Namespace) -> int:
    from .httpcheck import check_url

    check_url(args.url, args.sha256, args.timeout)
    return EXIT_OK


def cmd_stage(args: argparse.Namespace) -> int:
    from .staging import receive_stream

    immutable = [p for p in args.immutable.split(",") if p]
    result = receive_stream(Path(args.root), args.id, sys.stdin.buffer, immutable, answers=sys.stdout.buffer)
    text = (f"release {result.release_id} already staged" if result.already_staged else
            f"staged {result.release_id}: {result.files_written} written, {result.files_linked} linked, "
            f"{result.bytes_received} bytes received")
    _emit(args, {"release": result.release_id, "already_staged": result.already_staged,
                 "files_written": result.files_written, "files_linked": result.files_linked,
                 "bytes_received": result.bytes_received}, text)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from .releases import prune

    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    result = prune(Path(args.root), args.keep, set(args.protect))
    _emit(args, {"removed": sorted(result.removed), "kept": sorted(result.kept)},
          f"removed {len(result.removed)} release(s), kept {len(result.kept)}: {', '.join(sorted(result.kept))}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .releases import current_release, previous_release, staged_releases

    root = Path(args.root)
    staged = [release for release, _ in staged_releases(root)]
    data = {"current": current_release(root), "previous": previous_release(root), "staged": staged}
    _emit(args, data, f"current:  {data['current'] or '-'}\nprevious: {data['previous'] or '-'}\n"
                      f"staged:   {', '.join(staged) or '-'}")
    return EXIT_OK


def cmd_acl(args: argparse.Namespace) -> int:
    user, rules = acl_user(Keys(args.namespace), None if args.publisher else args.host)
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    _emit(args, {"user": user, "rules": rules}, acl_setuser_line(user, rules, password))
    return EXIT_OK


def cmd_wheels(args: argparse.Namespace) -> int:
    from .wheels import build_wheels

    result = build_wheels(Path(args.source), Path(args.dest), args.python, args.machine)
    _emit(args, {"changed": result.changed, "directory": str(result.directory), "files": result.files},
          "\n".join(sorted(result.files)))
    return EXIT_OK


# --- control plane ----------------------------------------------------------------------------------


def _hosts(value: str | None) -> list[str]:
    return [h for h in (value or "").split(",") if h]


def cmd_release_publish(args: argparse.Namespace) -> int:
    from .hoststatus import wait_for_acks
    from .lock import DeployLock, default_holder
    from .protocol import validate_release_id
    from .store import release_metadata

    store = _store(args)
    release = validate_release_id(args.release)
    meta = release_metadata(args.label or release)
    with DeployLock(store.client, args.namespace).held(default_holder("release publish"), force=args.force):
        overrides = _hosts(args.only)
        change = store.override(release, overrides, meta) if overrides else store.activate(release, meta)
        laggards = {}
        expected = overrides or _hosts(args.wait_for)
        if expected:
            laggards = wait_for_acks(store, expected, change.epoch, change.revision, release, args.timeout)
    data = {"release": release, "epoch": change.epoch, "revision": change.revision, "laggards": laggards}
    text = f"published {release} at revision {change.revision}"
    if laggards:
        text += "\n" + "\n".join(f"  {host}: {why}" for host, why in laggards.items())
    _emit(args, data, text)
    return 1 if laggards else EXIT_OK


def cmd_release_rollback(args: argparse.Namespace) -> int:
    from .lock import DeployLock, default_holder

    store = _store(args)
    with DeployLock(store.client, args.namespace).held(default_holder("rollback"), force=args.force):
        change = store.rollback(args.to)
    fleet = store.desired().fleet
    text = f"rolled back to {fleet} at revision {change.revision}"
    _emit(args, {"release": fleet, "revision": change.revision}, text)
    return EXIT_OK


def cmd_release_list(args: argparse.Namespace) -> int:
    store = _store(args)
    history = store.history()
    meta = store.release_metadata()
    rows = []
    for index, release in enumerate(history.releases):
        info = meta.get(release, {})
        rows.append({"release": release, "current": index == history.position, "label": info.get("label", ""),
                     "who": info.get("who", ""), "when": info.get("when", "")})
    lines = [f"{'*' if r['current'] else ' '} {r['release']}  {r['label']}  {r['who']}  {r['when']}" for r in rows]
    _emit(args, rows, "\n".join(lines) or "no release was ever published")
    return EXIT_OK


def cmd_data_set(args: argparse.Namespace) -> int:
    change = _store(args).data_set(args.key, args.value)
    _emit(args, {"key": args.key, "revision": change.revision}, f"{args.key} set at revision {change.revision}")
    return EXIT_OK


def cmd_data_get(args: argparse.Namespace) -> int:
    print(json.dumps(_store(args).data_get(args.key)))
    return EXIT_OK


def cmd_data_del(args: argparse.Namespace) -> int:
    change = _store(args).data_del(args.key)
    text = f"{args.key} deleted at revision {change.revision}" if change.revision else f"{args.key} was not set"
    _emit(args, {"key": args.key, "revision": change.revision, "deleted": bool(change.revision)}, text)
    return EXIT_OK


def cmd_data_list(args: argparse.Namespace) -> int:
    data = _store(args).data_list()
    _emit(args, data, "\n".join(f"{k} = {json.dumps(v)}" for k, v in data.items()) or "no data is set")
    return EXIT_OK


def cmd_fleet(args: argparse.Namespace) -> int:
    from .hoststatus import fleet_view

    views = fleet_view(_store(args), _hosts(args.hosts))
    rows = [{"host": v.host, "release": v.status.release if v.status else None,
             "revision": v.status.revision if v.status else None, "state": v.status.state if v.status else None,
             "target": v.target, "healthy": v.healthy, "problem": v.problem} for v in views]
    lines = [f"{r['host']:<16} {r['release'] or '-':<18} rev {r['revision'] or '-':<6} {r['state'] or '-':<9} "
             f"{r['problem']}" for r in rows]
    _emit(args, rows, "\n".join(lines))
    return EXIT_OK if all(v.healthy for v in views) else EXIT_UNHEALTHY


def cmd_lock(args: argparse.Namespace) -> int:
    from .lock import DeployLock, default_holder

    lock = DeployLock(_store(args).client, args.namespace)
    if args.force:
        previous = lock.break_lock(default_holder("lock --force"))
        text = f"broke the deploy lock held by {previous}" if previous else "the deploy lock was free"
        print(f"warning: {text}" if previous else text, file=sys.stderr if previous else sys.stdout)
        _emit(args, {"broken": previous}, "")
        return EXIT_OK
    info = lock.info()
    text = f"held by {info.holder}, expires in {info.expires_in:.0f}s" if info.holder else "free"
    _emit(args, {"holder": info.holder or None, "expires_in": info.expires_in}, text)
    return EXIT_OK


def cmd_rollout(args: argparse.Namespace) -> int:
    from .control import rollout, session, sync_new_hosts

    with session(args.inventory) as s:
        if args.build:
            result = rollout(s, Path(args.build), label=args.label, canary=args.canary, timeout=args.timeout,
                             check=args.check)
            new_hosts: list[str] = []
            data, text = result.to_json(), result.to_text()
        else:
            new_hosts = sync_new_hosts(s, timeout=args.timeout, check=args.check)
            data = {"changed": bool(new_hosts), "hosts": new_hosts, "check_mode": args.check}
            text = (f"brought {', '.join(new_hosts)} up to the current release" if new_hosts
                    else "every web host has the current release")
    _emit(args, data, text)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """The control plane's rollback on an inventory's fleet (what `fab rollback` and playbooks/rollback.yml run)."""
    from .control import rollback, session

    with session(args.inventory) as s:
        release, revision = rollback(s, args.to, timeout=args.timeout)
    _emit(args, {"changed": True, "release": release, "revision": revision},
          f"every host is on {release} (revision {revision})")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------------


def _control_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", help="publisher URL, e.g. redis://publisher@HOST:6379 (or $FRONTFLEET_REDIS_URL)")
    parser.add_argument("--password-file", help="file holding the publisher's password "
                                                "(or $FRONTFLEET_REDIS_PASSWORD_FILE)")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sync-agent", description="frontfleet's sync agent and control plane")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--namespace", default=os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                        help=f"key namespace (default ${NAMESPACE_ENV} or {DEFAULT_NAMESPACE})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("run", cmd_run, "run the agent daemon (systemd starts this)")
    p.add_argument("--config", default="/etc/sync-agent/config.toml")

    p = add("status", cmd_status, "show the releases on this host's disk")
    p.add_argument("--root", required=True, help="release root")
    _json_option(p)

    p = add("manifest", cmd_manifest, "print the manifest (path, size, sha256 per file) of a build directory")
    p.add_argument("dir")
    p.add_argument("--compact", action="store_true", help="one line")

    p = add("verify", cmd_verify, "check a directory against a manifest; with --root, record it as verified")
    p.add_argument("dir")
    p.add_argument("manifest", help="manifest file, or - for stdin")
    p.add_argument("--root", help="release root to write releases/<id>.manifest.json into")
    _json_option(p)

    p = add("have", cmd_have, "read a manifest on stdin, print the entries whose content this host lacks")
    p.add_argument("--root", required=True)

    p = add("export", cmd_export, "write a staging stream of a staged release's contents (sha256 list on stdin)")
    p.add_argument("--root", required=True)
    p.add_argument("--id", required=True)

    p = add("check-url", cmd_check_url, "GET a URL; fail unless it answers 200 (with --sha256: that body)")
    p.add_argument("url")
    p.add_argument("--sha256")
    p.add_argument("--timeout", type=float, default=5.0)

    p = add("stage", cmd_stage, "receive a staging stream on stdin into releases/<id>")
    p.add_argument("--root", required=True)
    p.add_argument("--id", required=True, help="the release id the stream must carry")
    p.add_argument("--immutable", default="assets/,_next/static/,static/",
                   help="comma-separated paths hard-linked into the asset pool")
    _json_option(p)

    p = add("prune", cmd_prune, "remove old releases; never current, previous or --protect")
    p.add_argument("--root", required=True)
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--protect", action="append", default=[], help="a release to keep (repeatable)")
    _json_option(p)

    p = add("acl", cmd_acl, "print the Redis ACL rules of a host's agent or of the publisher")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", help="inventory hostname of a web host")
    who.add_argument("--publisher", action="store_true")
    p.add_argument("--password-file", help="fill in the password (else a >PASSWORD placeholder)")
    _json_option(p)

    p = add("wheels", cmd_wheels, "build the agent's wheels for the hosts' Python and machine (controller)")
    p.add_argument("--python", required=True, help="the hosts' Python version, e.g. 3.11")
    p.add_argument("--machine", required=True, help="the hosts' machine, e.g. x86_64")
    p.add_argument("--dest", required=True, help="folder for the wheels")
    p.add_argument("--source", default=".", help="the frontfleet checkout")
    _json_option(p)

    release = add("release", lambda a: EXIT_USAGE, "publish, roll back and list releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    p = add("publish", cmd_release_publish, "make a staged release the desired one", rsub)
    p.add_argument("release")
    p.add_argument("--label")
    p.add_argument("--only", help="comma-separated hosts to move (per-host overrides, a canary)")
    p.add_argument("--wait-for", help="comma-separated hosts whose acknowledgement to wait for")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--force", action="store_true", help="break a dead holder's deploy lock")
    _control_options(p)
    _json_option(p)
    p = add("rollback", cmd_release_rollback, "one step back in the activation history, or --to a release", rsub)
    p.add_argument("--to")
    p.add_argument("--force", action="store_true", help="break a dead holder's deploy lock")
    _control_options(p)
    _json_option(p)
    p = add("list", cmd_release_list, "the activation history with labels", rsub)
    _control_options(p)
    _json_option(p)

    data = add("data", lambda a: EXIT_USAGE, "shared runtime data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = add("set", cmd_data_set, "set KEY to a JSON value", dsub)
    p.add_argument("key")
    p.add_argument("value", help="JSON, e.g. true, 42, '\"text\"', '{\"a\": 1}'")
    _control_options(p)
    _json_option(p)
    p = add("get", cmd_data_get, "print KEY's JSON value", dsub)
    p.add_argument("key")
    _control_options(p)
    p = add("del", cmd_data_del, "delete KEY", dsub)
    p.add_argument("key")
    _control_options(p)
    _json_option(p)
    p = add("list", cmd_data_list, "every key and value", dsub)
    _control_options(p)
    _json_option(p)

    p = add("rollout", cmd_rollout, "stage a build on every web host of an inventory and switch the fleet to it "
                                    "(controller); without --build, bring hosts lacking the current release up to it")
    p.add_argument("--inventory", "-i", help="Ansible inventory (default: $ANSIBLE_INVENTORY, else ansible.cfg's)")
    p.add_argument("--build", help="the build directory, e.g. dist/")
    p.add_argument("--label", help="release label (default: git describe of the build's repository)")
    p.add_argument("--canary", type=int, default=0, help="switch this many hosts first")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    p.add_argument("--check", action="store_true", help="say what would happen; change nothing")
    _json_option(p)

    p = add("rollback", cmd_rollback, "roll an inventory's fleet one step back in the activation history, or --to "
                                      "a staged release, and wait for every host (controller)")
    p.add_argument("--inventory", "-i", help="Ansible inventory (default: $ANSIBLE_INVENTORY, else ansible.cfg's)")
    p.add_argument("--to", help="a staged release to go to (default: one step back)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    _json_option(p)

    p = add("fleet", cmd_fleet, "the status of every host; exit 5 while any is silent, lagging or degraded")
    p.add_argument("--hosts", required=True, help="comma-separated inventory hostnames")
    _control_options(p)
    _json_option(p)

    p = add("lock", cmd_lock, "show the deploy lock; --force breaks a dead holder's lock")
    p.add_argument("--force", action="store_true")
    _control_options(p)
    _json_option(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except FrontfleetError as err:
        print(f"sync-agent: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
