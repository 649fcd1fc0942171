"""`sync-agent`: one command line for both sides. This module holds the parser and nothing else of either side:
each subcommand names its handler as "side:function" (sync_agent/host/commands.py runs on a web host,
sync_agent/control/commands.py on the controller), imported only when that subcommand runs, so a web host never
loads the control side. Each handler returns a Report (sync_agent/report.py), printed here; the logic lives in
the package."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, FrontfleetError, ProtocolError, UsageError
from .manifest import Manifest, build_manifest
from .protocol import validate_namespace
from .report import Report, error_report

NAMESPACE_ENV = "FRONTFLEET_NAMESPACE"
DEFAULT_NAMESPACE = "frontfleet"

Handler = Callable[[argparse.Namespace], Report]


def read_manifest(source: str) -> Manifest:
    """A manifest from a file, or stdin for "-"."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as err:
        raise UsageError(f"cannot read the manifest {source}: {err.strerror}") from err
    try:
        return Manifest.from_json(json.loads(text))
    except json.JSONDecodeError as err:
        raise UsageError(f"the manifest {source} is not JSON: {err}") from err


def manifest(args: argparse.Namespace) -> Report:
    data = build_manifest(Path(args.dir)).to_json()
    return Report(data, json.dumps(data, indent=None if args.compact else 2))


def _handler(target: str) -> Handler:
    """The function a subcommand names, imported now: "host:stage" is sync_agent.host.commands.stage,
    "control:rollout_build" sync_agent.control.commands.rollout_build, "cli:manifest" this module's."""
    side, _, name = target.partition(":")
    module = sys.modules[__name__] if side == "cli" else importlib.import_module(f"{__package__}.{side}.commands")
    handler: Handler = getattr(module, name)
    return handler


def _control_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", help="publisher URL, e.g. redis://publisher@HOST:6379 (or $FRONTFLEET_REDIS_URL)")
    parser.add_argument("--password-file", help="file holding the publisher's password "
                                                "(or $FRONTFLEET_REDIS_PASSWORD_FILE)")


def _namespace(value: str) -> str:
    """--namespace (or $FRONTFLEET_NAMESPACE, which argparse passes through here too), checked before anything
    connects."""
    try:
        return validate_namespace(value)
    except ProtocolError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    """What an operation on an inventory's fleet takes (rollout, release publish)."""
    parser.add_argument("--inventory", "-i", help="Ansible inventory (default: $ANSIBLE_INVENTORY, else ansible.cfg's)")
    parser.add_argument("--canary", type=int, default=0, help="switch this many hosts first")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    _json_option(parser)


def _rollback_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", help="a staged release to go to (default: one step back)")
    parser.add_argument("--request", help="the request id that a rollback whose outcome was unknown printed: made "
                                          "at most once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    parser.add_argument("--inventory", "-i", help="Ansible inventory (default: $ANSIBLE_INVENTORY, else "
                                                  "ansible.cfg's)")
    _json_option(parser)


def _private_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--private", action="store_true", help=help_text)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sync-agent", description="frontfleet's sync agent and control plane")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--namespace", type=_namespace, default=os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                        help=f"key namespace (default ${NAMESPACE_ENV} or {DEFAULT_NAMESPACE})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: str, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("run", "host:run", "run the agent daemon (systemd starts this)")
    p.add_argument("--config", default="/etc/sync-agent/config.toml")

    p = add("status", "host:status", "show the releases on this host's disk and the point its agent applied")
    p.add_argument("--root", required=True, help="release root")
    p.add_argument("--data", action="store_true", help="also the shared data this host serves (data.json)")
    _json_option(p)

    p = add("layout", "host:layout", "lay out a release root (root owns it, the agent live/ and shared/), moving "
            "an earlier layout in place; prints what it changed")
    p.add_argument("--root", required=True, help="release root")
    p.add_argument("--user", required=True, help="the agent's user")
    p.add_argument("--dry-run", action="store_true", help="only say what would change (Ansible's check mode)")
    _json_option(p)

    p = add("manifest", "cli:manifest", "print the manifest (path, size, sha256 per file) of a build directory")
    p.add_argument("dir")
    p.add_argument("--compact", action="store_true", help="one line")

    p = add("verify", "host:verify_dir", "check a directory against a manifest; with --root, record it as verified")
    p.add_argument("dir")
    p.add_argument("manifest", help="manifest file, or - for stdin")
    p.add_argument("--root", help="release root to write releases/<id>.manifest.json into")
    _json_option(p)

    p = add("have", "host:have", "read a manifest on stdin, print the entries whose content this host lacks")
    p.add_argument("--root", required=True)

    p = add("export", "host:export", "write a staging stream of a staged release's contents (sha256 list on stdin)")
    p.add_argument("--root", required=True)
    p.add_argument("--id", required=True)

    p = add("check-url", "host:check", "GET a URL; fail unless it answers 200 (with --sha256: that body)")
    p.add_argument("url")
    p.add_argument("--sha256")
    p.add_argument("--timeout", type=float, default=5.0)

    p = add("stage", "host:stage", "receive a staging stream on stdin into releases/<id>")
    p.add_argument("--root", required=True)
    p.add_argument("--id", required=True, help="the release id the stream must carry")
    p.add_argument("--immutable", default="assets/,_next/static/,static/",
                   help="comma-separated paths hard-linked into the asset pool")
    _json_option(p)

    p = add("prune", "host:prune_releases", "remove old releases; never current, previous or --protect")
    p.add_argument("--root", required=True)
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--protect", action="append", default=[], help="a release to keep (repeatable)")
    p.add_argument("--partial-grace", type=float, default=60.0, help="keep a releases/*.partial (a staging) that "
                   "changed less than this many seconds ago")
    _json_option(p)

    p = add("acl", "control:acl", "print the Redis ACL rules of a host's agent or of the publisher")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", help="inventory hostname of a web host")
    who.add_argument("--publisher", action="store_true")
    p.add_argument("--password-file", help="fill in the password (else a >PASSWORD placeholder)")
    _json_option(p)

    p = add("wheels", "control:wheels", "build the agent's wheels for the hosts' Python and machine (controller)")
    p.add_argument("--python", required=True, help="the hosts' Python version, e.g. 3.11")
    p.add_argument("--machine", required=True, help="the hosts' machine, e.g. x86_64")
    p.add_argument("--dest", help="folder for the wheels (default: ~/.cache/frontfleet/wheels/cpXY-MACHINE)")
    _json_option(p)

    p = add("wheels-lock", "control:wheels_lock", "resolve the hosts' dependencies again and write the wheel lock "
            "with every wheel's sha256 (a maintainer's step; needs the package index)")
    _json_option(p)

    release = add("release", "", "publish, roll back and list releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    p = add("publish", "control:release_publish", "make a release staged on every web host of an inventory the "
            "live one, with a rollout's checks: acknowledgements, an HTTP check from each host, undo on failure", rsub)
    p.add_argument("release")
    p.add_argument("--label")
    _fleet_options(p)
    p = add("rollback", "control:release_rollback", "the same as `sync-agent rollback`", rsub)
    _rollback_options(p)
    p = add("list", "control:release_list", "the activation history with labels", rsub)
    _control_options(p)
    _json_option(p)

    data = add("data", "", "shared runtime data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = add("set", "control:data_set", "set KEY to a JSON value", dsub)
    p.add_argument("key")
    p.add_argument("value", help="JSON, e.g. true, 42, '\"text\"', '{\"a\": 1}'")
    _private_option(p, "a private key: reaches the hosts' private templates (R/private/), never a served byte")
    _control_options(p)
    _json_option(p)
    p = add("get", "control:data_get", "print KEY's JSON value", dsub)
    p.add_argument("key")
    _private_option(p, "a private key's value")
    _control_options(p)
    p = add("del", "control:data_del", "delete KEY", dsub)
    p.add_argument("key")
    _private_option(p, "a private key")
    _control_options(p)
    _json_option(p)
    p = add("export", "control:data_export", "every key and value as a file `data import` reads", dsub)
    p.add_argument("--file", help="write it here (0600) instead of to stdout")
    _private_option(p, "also the private keys and values (the file then holds them)")
    _control_options(p)
    _json_option(p)
    p = add("import", "control:data_import", "make the store hold what an export file holds, one change per key "
            "that differs", dsub)
    p.add_argument("file", help="an export file, or - for stdin")
    p.add_argument("--replace", action="store_true", help="also delete the keys the file does not hold")
    _control_options(p)
    _json_option(p)
    p = add("list", "control:data_list", "every key and value; private keys by name only", dsub)
    _private_option(p, "also the private keys' values")
    _control_options(p)
    _json_option(p)

    p = add("rollout", "control:rollout_build", "stage a build on every web host of an inventory and switch "
            "the fleet to it; without --build, bring hosts lacking the current release up to it")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--build", help="the build directory, e.g. dist/")
    what.add_argument("--abort", action="store_true", help="put back what an unfinished rollout (killed, its "
                      "lock lost) switched")
    p.add_argument("--label", help="release label (default: git describe of the build's repository)")
    p.add_argument("--check", action="store_true", help="say what would happen; change nothing")
    p.add_argument("--init", action="store_true", help="on an empty store, make a new one when no web host has a "
                   "release yet (the release play's first run); refused when hosts have one (see `recover`)")
    _fleet_options(p)

    p = add("rollback", "control:release_rollback", "roll an inventory's fleet one step back in the "
            "activation history, or --to a staged release, and wait for every host")
    _rollback_options(p)

    p = add("recover", "control:recover", "rebuild a wiped (or distrusted) store from what an inventory's web "
            "hosts hold: the release, its history and the data of the host with the newest applied change")
    p.add_argument("--release", help="the release to publish (default: the one every web host serves)")
    p.add_argument("--yes", action="store_true", help="publish without asking")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    p.add_argument("--inventory", "-i", help="Ansible inventory (default: $ANSIBLE_INVENTORY, else ansible.cfg's)")
    _json_option(p)

    p = add("fleet", "control:fleet", "the status of every host; exit 5 while any is silent, lagging or degraded")
    p.add_argument("--hosts", required=True, help="comma-separated inventory hostnames")
    _control_options(p)
    _json_option(p)

    p = add("log", "control:change_log", "who changed what and when: data keys, releases, rollbacks, recoveries, "
            "lock breaks (newest first)")
    p.add_argument("--limit", type=int, default=50, help="how many entries")
    _control_options(p)
    _json_option(p)

    p = add("lock", "control:lock", "show the deploy lock; --force breaks a dead holder's lock")
    p.add_argument("--force", action="store_true")
    _control_options(p)
    _json_option(p)
    return parser


def build_frontfleet_parser() -> argparse.ArgumentParser:
    """`frontfleet`: the command of the installed distribution (today: init)."""
    parser = argparse.ArgumentParser(prog="frontfleet", description="frontfleet in your own repository")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="write a starter inventory, an ansible.cfg and a fabfile",
                       description="write a starter inventory (inventory/ENV/), an ansible.cfg and a fabfile that "
                       "imports the fab tasks; existing files are left alone unless --force")
    p.set_defaults(handler="control:init")
    p.add_argument("directory", nargs="?", default=".", help="the repository (default: the current folder)")
    p.add_argument("--env", default="production", help="the inventory's name: inventory/ENV (default: production)")
    p.add_argument("--app", help="frontfleet_app (default: the folder's name)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    _json_option(p)
    return parser


def frontfleet_main(argv: Sequence[str] | None = None) -> int:
    return main(argv, build_frontfleet_parser())


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.handler:  # a group (`release`, `data`) without its action: argparse requires one
        return EXIT_USAGE
    try:
        report = _handler(args.handler)(args)
    except FrontfleetError as err:
        if args.handler.startswith("host:"):  # stdout is the controller's answer channel (stage, have): stderr only
            print(f"{parser.prog}: {err}", file=sys.stderr)
            return err.exit_code
        report = error_report(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    report.emit(getattr(args, "json", False))
    if report.failure:
        print(f"{parser.prog}: {report.failure}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
