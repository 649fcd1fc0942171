"""The `sync-agent` subcommands that run on a web host: the daemon, and what the controller runs there over SSH.
Each parses nothing (sync_agent/cli.py did), calls one function of the host side, and returns its Report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli import read_manifest
from ..errors import ProtocolError, UnsafePath, UsageError
from ..layout import (
    PRIVATE,
    SHARED,
    check_root_owned,
    current_release,
    is_staged,
    previous_release,
    read_record,
    release_dir,
    staged_releases,
)
from ..report import Report
from ..stream import write_stream
from .agent import main as run_agent
from .httpcheck import check_url
from .releases import prune, record_verified, verify
from .rootdir import lay_out
from .shared_data import APPLIED_FILE, DATA_FILE, PRIVATE_DATA_FILE, SharedFiles
from .staging import lacking, receive_stream


def run(args: argparse.Namespace) -> Report:
    """The daemon, until systemd stops it; its exit code is the command's."""
    return Report(None, "", run_agent(args.config))


def layout(args: argparse.Namespace) -> Report:
    plan = lay_out(args.root, args.user, dry_run=args.dry_run)
    verb = "would change" if plan.dry_run else "changed"
    text = "\n".join(plan.changes) if plan.changes else f"{plan.root} is laid out; nothing to change"
    return Report({"root": str(plan.root), "changes": plan.changes, "dry_run": plan.dry_run},
                  text if not plan.changes else f"{verb}:\n{text}")


def verify_dir(args: argparse.Namespace) -> Report:
    manifest = read_manifest(args.manifest)
    verify(Path(args.dir), manifest)
    text = f"{args.dir} matches release {manifest.release_id} ({len(manifest.entries)} files)"
    if args.root:
        record_verified(Path(args.root), manifest)
        text += f"; recorded in {args.root}/releases/{manifest.release_id}.manifest.json"
    return Report({"release": manifest.release_id, "files": len(manifest.entries), "verified": True}, text)


def have(args: argparse.Namespace) -> Report:
    manifest = read_manifest("-")
    root = Path(args.root)
    staged = is_staged(root, manifest.release_id)
    missing = [] if staged else lacking(root, manifest)
    answer = {"release": manifest.release_id, "staged": staged, "missing": [entry.to_json() for entry in missing]}
    return Report(answer, json.dumps(answer))  # one line, read by the controller (control/rollout.py ask_have)


def export(args: argparse.Namespace) -> Report:
    check_root_owned(args.root)  # run as root: it reads whole releases and sends them to another host
    manifest = read_record(Path(args.root), args.id)
    wanted: Any = json.loads(sys.stdin.read() or "[]")
    if not isinstance(wanted, list) or not all(isinstance(sha, str) for sha in wanted):
        raise UsageError("export reads a JSON list of sha256 digests on stdin")
    write_stream(sys.stdout.buffer, manifest, release_dir(Path(args.root), args.id), wanted)
    sys.stdout.buffer.flush()
    return Report(None, "")  # the stream went to stdout


def check(args: argparse.Namespace) -> Report:
    check_url(args.url, args.sha256, args.timeout)
    return Report({"url": args.url, "ok": True}, "")


def stage(args: argparse.Namespace) -> Report:
    immutable = [p for p in args.immutable.split(",") if p]
    result = receive_stream(Path(args.root), args.id, sys.stdin.buffer, immutable, answers=sys.stdout.buffer)
    text = (f"release {result.release_id} already staged" if result.already_staged else
            f"staged {result.release_id}: {result.files_written} written, {result.files_linked} linked, "
            f"{result.bytes_received} bytes received")
    return Report({"release": result.release_id, "already_staged": result.already_staged,
                   "files_written": result.files_written, "files_linked": result.files_linked,
                   "bytes_received": result.bytes_received}, text)


def prune_releases(args: argparse.Namespace) -> Report:
    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    if args.partial_grace < 0:
        raise UsageError("--partial-grace must be 0 or more seconds")
    result = prune(Path(args.root), args.keep, set(args.protect), args.partial_grace)
    kept = sorted(result.kept)
    return Report({"removed": sorted(result.removed), "kept": kept},
                  f"removed {len(result.removed)} release(s), kept {len(kept)}: {', '.join(kept)}")


def status(args: argparse.Namespace) -> Report:
    """The releases on disk and the point this host's agent applied; with --data, also the data it serves and its
    private data (what `fab recover` rebuilds a store from). The private values go to stdout, the answer channel of
    the controller that runs this as root over SSH, and nowhere else: no log line, no file."""
    root = Path(args.root)
    staged = [release for release, _ in staged_releases(root)]
    # The agent's folders: read without following its symlinks.
    shared = SharedFiles(root / SHARED, None, "", root / PRIVATE)
    try:
        point, left = shared.read_applied()
        applied: Any = {**point.to_json(), "left": left} if point is not None else None
        point_text = str(point) if point is not None else "-"
    except (OSError, ValueError, ProtocolError, UnsafePath) as err:
        applied = {"error": f"cannot read {root / SHARED / APPLIED_FILE}: {err}"}
        point_text = applied["error"]
    data = {"current": current_release(root), "previous": previous_release(root), "staged": staged,
            "applied": applied}
    if args.data:
        try:
            data["data"] = shared.read_data()
        except (OSError, ProtocolError, UnsafePath) as err:
            data["data"] = {"error": f"cannot read {root / SHARED / DATA_FILE}: {err}"}
        try:
            data["private"] = shared.read_private()
        except (OSError, ProtocolError, UnsafePath) as err:
            data["private"] = {"error": f"cannot read {root / PRIVATE / PRIVATE_DATA_FILE}: "
                                        f"{err.strerror if isinstance(err, OSError) else type(err).__name__}"}
    return Report(data, f"current:  {data['current'] or '-'}\nprevious: {data['previous'] or '-'}\n"
                        f"staged:   {', '.join(staged) or '-'}\napplied:  {point_text}")
