"""Rollout, publish, rollback, prune and bringing new hosts up: every operation that changes what the fleet
serves, written once. Each stages or checks on every host first, switches only when every host is ready, waits
for every acknowledgement, checks over HTTP from each host, and undoes the switch on any failure.

    rollout = manifest → what each host lacks → one stream per host → cutover → prune
    publish = staged on every host? → cutover        (a release staged earlier, e.g. by a rollout --check)
    cutover = record → publish the desired release → acknowledgements → HTTP check from each host → undo on failure
    abort   = put back what the record of an unfinished rollout saved (its process was killed, its lock lost)

Each holds the deploy lock (lock.Hold) and passes its token with every release change, so one whose lock was lost
changes nothing more; it stops at its next step.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from ..errors import (
    FrontfleetError,
    HostError,
    HostFailures,
    LockLost,
    OutcomeUnknown,
    RemoteCommandFailed,
    RolloutFailed,
    RolloutUnfinished,
    StoreEmpty,
    UsageError,
)
from ..layout import record_path
from ..manifest import Entry, Manifest, build_manifest
from ..protocol import Desired, new_change_id, validate_release_id
from ..stream import offer, open_offer, read_answer, write_blobs
from .hoststatus import fleet_view, forget_replaced_statuses, read_statuses, wait_for_acks
from .inventory import Host
from .lock import Hold, default_holder
from .records import History, RolloutRecord, saved_state, unfinished_message
from .session import Session, on_each, reading_answer_of, release_root
from .store import release_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ACK_TIMEOUT = 30.0


class Progress:
    """Callbacks for a live display; the default shows nothing (fab supplies a rich one)."""

    def stage_started(self, host: str, total_bytes: int) -> None: ...
    def stage_advanced(self, host: str, sent_bytes: int) -> None: ...
    def stage_finished(self, host: str, result: HostStaging) -> None: ...
    def phase(self, text: str) -> None: ...
    def waiting(self, pending: list[str]) -> None: ...


@dataclass
class HostStaging:
    """What staging did on one host."""

    host: str
    already_staged: bool = False
    files_sent: int = 0
    bytes_sent: int = 0  # the whole stream: compressed manifest, headers and contents
    files_linked: int = 0


@dataclass
class RolloutResult:
    release: str
    previous: str | None
    staged: dict[str, HostStaging] = field(default_factory=dict)
    switched: bool = False
    revision: int = 0
    skew_ns: int | None = None  # latest minus earliest switched_at_ns across hosts
    pruned: dict[str, list[str]] = field(default_factory=dict)
    checked: bool = False  # with --check: what would happen, nothing done
    # seconds from the call's start to the end of each phase: staged, acknowledged, checked, pruned
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.switched or any(not s.already_staged for s in self.staged.values())

    def to_text(self) -> str:
        """The one human summary of a rollout, printed by `fab rollout` and `sync-agent rollout` alike."""
        if not self.changed:
            return f"{self.release} is already live everywhere; nothing sent, nothing switched"
        if self.checked:
            lines = [f"would roll out {self.release} (now: {self.previous or 'none'}); nothing was sent or switched"]
        else:
            lines = [f"rolled out {self.release} (previous: {self.previous or 'none'}) at revision {self.revision}"]
        for host, staged in sorted(self.staged.items()):
            verb = "would send" if self.checked else "sent"
            sent = ("already staged" if staged.already_staged
                    else f"{verb} {staged.files_sent} file(s), {staged.bytes_sent} bytes")
            lines.append(f"  {host}: {sent}")
        if self.skew_ns is not None:
            lines.append(f"cutover skew: {self.skew_ns / 1e6:.2f} ms")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "previous": self.previous, "changed": self.changed,
                "switched": self.switched, "revision": self.revision, "skew_ns": self.skew_ns,
                "check_mode": self.checked, "pruned": self.pruned, "timings": self.timings,
                "staged": {h: vars(s) for h, s in sorted(self.staged.items())}}


# --- staging ----------------------------------------------------------------------------------------


def ask_have(s: Session, host: Host, manifest: Manifest) -> tuple[bool, list[Entry]]:
    """(already staged, the entries whose content the host has nowhere)."""
    answer = s.agent_json(host, "have", "--root", release_root(host), stdin=manifest.dumps().encode())
    with reading_answer_of(host):
        return bool(answer["staged"]), [Entry(e["path"], e["size"], e["sha256"]) for e in answer["missing"]]


def _stage_command(s: Session, host: Host, release: str) -> list[str]:
    immutable = ",".join(host.settings["frontfleet_immutable_paths"])
    return s.agent(host, "stage", "--root", release_root(host), "--id", release, "--immutable", immutable, "--json")


class _CountingWriter:
    """Counts what goes into an SSH stream, for the bytes-sent figures."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe, self.count = pipe, 0

    def write(self, data: bytes) -> int:
        self.pipe.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.pipe.flush()


def stage_from_build(s: Session, host: Host, manifest: Manifest, offered: Future[bytes], build: Path,
                     progress: Progress) -> HostStaging:
    """Stage a release on one host from the controller's build, in one SSH session: ask whether it
    has the release, offer the manifest (`stream.offer`), send exactly the contents it lacks."""
    writers: list[_CountingWriter] = []

    def talk(stdin: IO[bytes], stdout: IO[bytes]) -> None:
        writer = _CountingWriter(stdin)
        writers.append(writer)
        open_offer(writer)  # type: ignore[arg-type]
        if read_answer(stdout, "staged") is not False:
            return  # staged already, or it failed (its exit status and stderr say why)
        writer.write(offered.result())
        writer.flush()
        missing = read_answer(stdout, "missing")
        if missing is None:
            return
        sizes = {e.sha256: e.size for e in manifest.entries}
        progress.stage_started(host.name, sum(sizes.get(sha, 0) for sha in missing))
        # the bar counts content bytes, as its total does; bytes_sent counts the whole stream
        write_blobs(writer, manifest, build, missing,  # type: ignore[arg-type]
                    progress=lambda n: progress.stage_advanced(host.name, n))

    output = s.remote.stream(host, _stage_command(s, host, manifest.release_id), talk)
    with reading_answer_of(host):
        answer = json.loads(output)
        result = HostStaging(host.name, bool(answer["already_staged"]), int(answer["files_written"]),
                             writers[0].count, int(answer["files_linked"]))
    progress.stage_finished(host.name, result)
    return result


def _on_disk(s: Session, host: Host, read: Callable[[dict[str, Any]], T]) -> T:
    """What a host's own `sync-agent status` says its disk holds, read by read (an answer it cannot read fails
    that host, named)."""
    answer = s.agent_json(host, "status", "--root", release_root(host), "--json")
    with reading_answer_of(host):
        return read(answer)


def staged_on(s: Session, host: Host) -> list[str]:
    """The releases staged and verified on a host."""
    return _on_disk(s, host, lambda answer: [str(release) for release in answer["staged"]])


def current_on(s: Session, host: Host) -> str | None:
    """The release a host serves (its `current`), None when it has none yet."""
    return _on_disk(s, host, lambda answer: str(answer["current"]) if answer["current"] else None)


def stage_everywhere(hosts: list[Host], stage_one: Callable[[Host], HostStaging]) -> dict[str, HostStaging]:
    """Stage on every host in parallel; after all have finished, any failure stops the rollout, per host."""
    results, failures = on_each(hosts, stage_one)
    if failures:
        raise RolloutFailed("staging failed, nothing was switched", failures)
    return results


def require_staged_everywhere(s: Session, release: str) -> None:
    """Refuse a release that some web host lacks, naming them: a switch to it would fail there."""
    validate_release_id(release)
    staged, failures = on_each(list(s.fleet.web), lambda host: staged_on(s, host))
    if failures:
        raise RolloutFailed(f"cannot tell where {release} is staged, nothing was switched", failures)
    missing = {host: "not staged" for host, releases in staged.items() if release not in releases}
    if missing:
        raise HostFailures(f"{release} is not staged on every web host", missing,
                           "nothing was switched; `fab releases` lists the releases to go back to, "
                           "`fab rollout --build` stages a build")


def read_staged_manifest(s: Session, host: Host, release: str) -> Manifest:
    """The verified record of a release staged on host (what it staged, as it checked it)."""
    return Manifest.from_json(s.remote.run(host, ["cat", str(record_path(release_root(host), release))]))


# --- cutover ----------------------------------------------------------------------------------------


def http_check(s: Session, hosts: list[Host], manifest: Manifest) -> dict[str, FrontfleetError]:
    """From each host itself, GET its index.html and compare with the release's; host → why it failed."""
    index = next((e for e in manifest.entries if e.path == "index.html"), None)

    def check(host: Host) -> None:
        address = host.settings["frontfleet_http_address"] or "127.0.0.1"
        url = f"http://{address}:{host.settings['frontfleet_http_port']}/index.html"
        command = s.agent(host, "check-url", url)
        if index is not None:
            command += ["--sha256", index.sha256]
        try:
            s.remote.run(host, command, timeout=30)
        except HostError as err:
            raise HostError(host.name, f"HTTP check failed: {err.why}") from err

    return on_each(hosts, check)[1]


def _skew(s: Session, hosts: list[str]) -> int | None:
    statuses, _ = read_statuses(s.store, hosts)
    stamps = [st.switched_at_ns for st in statuses.values() if st is not None and st.switched_at_ns]
    return max(stamps) - min(stamps) if len(stamps) == len(hosts) and stamps else None


def _undo(s: Session, saved: tuple[Desired, History], hosts: list[str], timeout: float,
          hold: Hold) -> tuple[str, dict[str, str]]:
    """Put the saved desired state back and wait for the hosts that answer: (where the fleet is, the hosts that
    did not confirm it).

    A silent host (agent stopped, host down) is not waited for: it cannot confirm, and it
    resynchronises to the restored state from the snapshot when it comes back.
    """
    desired, history = saved
    change = s.store.restore(desired, history, token=hold.token)
    if desired.fleet is None:
        return "there was no earlier release to go back to", {}
    statuses, now = read_statuses(s.store, hosts)
    silent = sorted(h for h, st in statuses.items() if st is None or st.silent(now))
    answering = [h for h in hosts if h not in silent]
    laggards = wait_for_acks(s.store, answering, change.epoch, change.revision, desired.fleet, timeout, hold.check)
    where = f"every host that answers is back on {desired.fleet}"
    if laggards:
        where = str(HostFailures(f"rolled back to {desired.fleet}, but not every host confirmed it", laggards))
    if silent:
        where += f" ({', '.join(silent)} silent: it takes {desired.fleet} from the snapshot when its agent is back)"
    return where, laggards


def cutover(s: Session, manifest: Manifest, result: RolloutResult, saved: tuple[Desired, History],
            meta: dict[str, Any], canary: int, timeout: float, progress: Progress, started: float,
            hold: Hold) -> None:
    """Switch the fleet (the first `canary` hosts, then all) to a release staged everywhere; after each step wait
    for every acknowledgement and check each host over HTTP. Any failure puts the saved state back and raises
    RolloutFailed, which names each failed host and where the fleet is now.

    Before the first switch the store records the rollout and the state to go back to; the record goes once the
    fleet is on the release or back. A rollout that dies between leaves it: `fab status` names it, the next
    rollout refuses, and `fab rollout --abort` puts that state back (abort)."""
    release = manifest.release_id
    hosts = list(s.fleet.web)
    steps: list[tuple[str, list[Host], Callable[[], Any]]] = []
    if canary:
        steps.append(("canary", hosts[:canary],
                      lambda: s.store.override(release, [h.name for h in hosts[:canary]], meta, token=hold.token)))
    steps.append(("switching", hosts, lambda: s.store.activate(release, meta, token=hold.token)))
    record = RolloutRecord(new_change_id(), release, steps[0][0], saved_state(*saved))
    s.store.begin_rollout(record, hold.token)
    for index, (phase, targets, publish) in enumerate(steps):
        if index:
            s.store.rollout_phase(phase, hold.token)
        progress.phase(f"switching {len(targets)} host(s) to {release}")
        change = publish()
        progress.waiting([h.name for h in targets])
        failures: dict[str, FrontfleetError | str] = dict(wait_for_acks(
            s.store, [h.name for h in targets], change.epoch, change.revision, release, timeout, hold.check))
        result.timings["acknowledged"] = round(time.monotonic() - started, 3)
        if not failures:
            failures.update(http_check(s, targets, manifest))
            result.timings["checked"] = round(time.monotonic() - started, 3)
        if failures:
            s.store.rollout_phase("undoing", hold.token)
            where, _ = _undo(s, saved, [h.name for h in hosts], timeout, hold)
            s.store.finish_rollout(record.id, hold.token)
            raise RolloutFailed(f"rollout of {release} failed", failures, where)
        result.revision = int(change.revision)
    s.store.finish_rollout(record.id, hold.token)
    result.switched = True
    result.skew_ns = _skew(s, [h.name for h in hosts])


def refuse_unfinished(s: Session) -> None:
    """Nothing moves the fleet while a rollout that switched hosts is unfinished: `fab rollout --abort` first."""
    record = s.store.unfinished_rollout()
    if record is not None:
        raise RolloutUnfinished(unfinished_message(record))


def ensure_store(s: Session, init: bool, check: bool, hold: Hold) -> None:
    """Refuse a change on an empty store; with init (the release play), make a new store when no web host has a
    release yet (a new fleet), and refuse when some have one: Redis lost its data, and `fab recover` rebuilds it
    from them."""
    if s.store.has_epoch():
        return
    if not init:
        raise StoreEmpty()
    releases, failures = on_each(list(s.fleet.web), lambda host: current_on(s, host))
    if failures:
        raise RolloutFailed("the store is empty and not every web host says what it serves, nothing was changed",
                            failures)
    serving = {host: f"serves {release}" for host, release in releases.items() if release}
    if serving:
        raise HostFailures("the store is empty but web hosts serve releases, so this is no new fleet: Redis lost its "
                           "data; nothing was changed", serving,
                           "run `fab recover` to rebuild the store from what the hosts hold, then deploy again")
    if not check:
        s.store.init(token=hold.token)


def _check_canary(canary: int, hosts: list[Host]) -> None:
    if canary < 0 or (canary and canary >= len(hosts)):
        raise UsageError(f"--canary must be between 1 and {len(hosts) - 1} for a fleet of {len(hosts)} hosts")


def _already_live(s: Session, desired: Desired, release: str) -> bool:
    views = fleet_view(s.store, s.web_names)
    return desired.fleet == release and not desired.overrides and all(
        v.status is not None and v.status.release == release for v in views)


# --- the operations ---------------------------------------------------------------------------------


def default_label(build: Path) -> str | None:
    """`git describe` of the build's repository, if it is in one."""
    try:
        result = subprocess.run(["git", "-C", str(build), "describe", "--always", "--dirty", "--tags"],
                                capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def rollout(s: Session, build: Path, label: str | None = None, canary: int = 0,
            timeout: float = DEFAULT_ACK_TIMEOUT, check: bool = False, progress: Progress | None = None,
            hold: Hold | None = None, init: bool = False) -> RolloutResult:
    """Stage a build everywhere, then cut the whole fleet over at once; roll back on any failure. On an empty
    store it is refused, unless init (see ensure_store)."""
    progress = progress or Progress()
    started = time.monotonic()
    if not build.is_dir():
        raise UsageError(f"the build {build} is not a directory; build your frontend first (e.g. `npm run build`)")
    hosts = list(s.fleet.web)
    with ThreadPoolExecutor(max_workers=1) as hashing:  # the SSH handshakes run while the build is hashed
        hashed = hashing.submit(build_manifest, build)
        on_each(hosts, s.remote.connect)
        manifest = hashed.result()
    release = manifest.release_id
    _check_canary(canary, hosts)
    with s.lock.held(default_holder(f"rollout of {release}"), hold) as hold:
        ensure_store(s, init, check, hold)
        refuse_unfinished(s)
        desired, history = s.store.desired(), s.store.history()
        result = RolloutResult(release, desired.fleet)
        if check:
            answers, failures = on_each(hosts, lambda host: ask_have(s, host, manifest))
            if failures:
                raise RolloutFailed("cannot tell what each host lacks", failures)
            for host, (staged, missing) in answers.items():
                result.staged[host] = HostStaging(host, staged, len(missing), sum(e.size for e in missing))
            result.switched, result.checked = desired.fleet != release or bool(desired.overrides), True
            return result
        progress.phase(f"staging {release} ({len(manifest.entries)} files, {manifest.total_bytes} bytes)")
        with ThreadPoolExecutor(max_workers=1) as compressing:  # while the hosts start and answer "staged?"
            offered = compressing.submit(offer, manifest)
            result.staged = stage_everywhere(hosts, lambda h: stage_from_build(s, h, manifest, offered, build,
                                                                               progress))
        result.timings["staged"] = round(time.monotonic() - started, 3)
        hold.check()
        if _already_live(s, desired, release):
            progress.phase(f"{release} is already live everywhere")
            return result
        meta = release_metadata(label or default_label(build) or release, files=len(manifest.entries),
                                bytes=manifest.total_bytes)
        cutover(s, manifest, result, (desired, history), meta, canary, timeout, progress, started, hold)
        result.pruned = prune(s, hold=hold)
        result.timings["pruned"] = round(time.monotonic() - started, 3)
    return result


def publish(s: Session, release: str, label: str | None = None, canary: int = 0,
            timeout: float = DEFAULT_ACK_TIMEOUT, progress: Progress | None = None,
            hold: Hold | None = None) -> RolloutResult:
    """Make a release that is already staged on every web host the live one, with the rollout's cutover: the same
    acknowledgements, HTTP check and undo. `sync-agent release publish` runs this; nothing publishes around it."""
    progress = progress or Progress()
    started = time.monotonic()
    validate_release_id(release)
    hosts = list(s.fleet.web)
    _check_canary(canary, hosts)
    with s.lock.held(default_holder(f"publish of {release}"), hold) as hold:
        ensure_store(s, init=False, check=False, hold=hold)
        refuse_unfinished(s)
        desired, history = s.store.desired(), s.store.history()
        require_staged_everywhere(s, release)
        result = RolloutResult(release, desired.fleet)
        result.staged = {h.name: HostStaging(h.name, already_staged=True) for h in hosts}
        if _already_live(s, desired, release):
            return result
        manifest = read_staged_manifest(s, hosts[0], release)
        meta = release_metadata(label or release, files=len(manifest.entries), bytes=manifest.total_bytes)
        cutover(s, manifest, result, (desired, history), meta, canary, timeout, progress, started, hold)
    return result


def rollback(s: Session, to: str | None = None, timeout: float = DEFAULT_ACK_TIMEOUT,
             request: str | None = None) -> tuple[str, int]:
    """One step back in the activation history (or to a named staged release); (release, revision).

    With request (the id an earlier rollback whose outcome is unknown printed), it is made at most once: if that
    rollback was made, its outcome is reported and nothing moves again."""
    hosts = s.web_names
    with s.lock.held(default_holder("rollback")) as hold:
        refuse_unfinished(s)
        if to is not None:
            require_staged_everywhere(s, to)
        saved = (s.store.desired(), s.store.history())
        try:
            change = s.store.rollback(to, token=hold.token, request=request)
        except OutcomeUnknown as err:
            raise OutcomeUnknown(f"{err}; or run the same rollback with --request {err.request}: it is made at "
                                 "most once", err.request) from err
        release = s.store.desired().fleet or ""
        laggards = wait_for_acks(s.store, hosts, change.epoch, change.revision, release, timeout, hold.check)
        if laggards:
            raise RolloutFailed(f"rollback to {release} failed", laggards, _undo(s, saved, hosts, timeout, hold)[0])
    return release, int(change.revision)


def abort(s: Session, timeout: float = DEFAULT_ACK_TIMEOUT) -> tuple[RolloutRecord | None, str]:
    """Put back what the record of an unfinished rollout saved, wait for every host that answers, remove the
    record: (the record, where the fleet is), (None, "") when no rollout is unfinished."""
    hosts = s.web_names
    with s.lock.held(default_holder("abort of an unfinished rollout")) as hold:
        record = s.store.unfinished_rollout()
        if record is None:
            return None, ""
        if not record.id:  # written by something this controller cannot read: nothing to put back from it
            s.store.finish_rollout("", hold.token)
            return record, "its record was unreadable: it is removed and nothing was put back; `fab status` shows " \
                           "where each host is and `fab rollback --to RELEASE` moves the fleet"
        where, laggards = _undo(s, record.back_to_state, hosts, timeout, hold)
        s.store.finish_rollout("", hold.token)
        if laggards:
            raise RolloutFailed(f"abort of the rollout of {record.release}", laggards, where)
        return record, where


def prune(s: Session, keep: int | None = None, hold: Hold | None = None) -> dict[str, list[str]]:
    """Remove old releases on every host; never current, previous, or the next rollback target, nor a release
    being staged (a `.partial` younger than the lock's TTL may be the lock's next holder's). The lock is confirmed
    in Redis right before each host: a prune whose lock was lost removes nothing more."""
    keep = keep or int(s.fleet.setting("frontfleet_keep_releases"))
    lock = s.lock
    with lock.held(default_holder("prune"), hold) as hold:
        history = s.store.history()
        protect = [r for r in (history.rollback_target, s.store.desired().fleet) if r]

        def prune_one(host: Host) -> list[str]:
            command = ["prune", "--root", release_root(host), "--keep", str(keep), "--json"]
            for release in protect:
                command += ["--protect", release]
            grace = ["--partial-grace", str(int(lock.ttl * 2))]
            lock.confirm(hold)
            try:
                answer = s.agent_json(host, *command, *grace)
            except RemoteCommandFailed as err:
                if "--partial-grace" not in err.why:
                    raise
                # an agent from before 0.3 (controllers are upgraded first): its prune keeps no .partial
                lock.confirm(hold)
                answer = s.agent_json(host, *command)
            with reading_answer_of(host):
                return [str(release) for release in answer["removed"]]

        removed, failures = on_each(list(s.fleet.web), prune_one)
        lost = next((err for err in failures.values() if isinstance(err, LockLost)), None)
        if lost is not None:
            raise lost
        if failures:
            raise HostFailures("pruning failed", failures, f"pruned {', '.join(sorted(removed)) or 'no host'}")
        kept_somewhere = set(history.releases)
        gone = sorted({r for ids in removed.values() for r in ids} - kept_somewhere)
        if gone:
            s.store.forget_releases(gone, token=hold.token)
        forget_replaced_statuses(s.store, s.web_names)
        return removed


def sync_new_hosts(s: Session, timeout: float = DEFAULT_ACK_TIMEOUT, check: bool = False,
                   progress: Progress | None = None, init: bool = False) -> list[str]:
    """Bring web hosts that lack the current release up to it, relayed from a host that has it. With init (the
    release play without a build), an empty store is made first when no web host has a release (ensure_store).

    The release play runs this after the agents play on every deploy: it also removes the status hashes that
    upgraded agents left behind (forget_replaced_statuses)."""
    lacking = _sync_new_hosts(s, timeout, check, progress or Progress(), init)
    if not check:
        forget_replaced_statuses(s.store, s.web_names)
    return lacking


def _sync_new_hosts(s: Session, timeout: float, check: bool, progress: Progress, init: bool) -> list[str]:
    if init:
        with s.lock.held(default_holder("init of a new store")) as hold:
            ensure_store(s, init, check, hold)
    release = s.store.desired().fleet
    if release is None:
        return []
    with s.lock.held(default_holder(f"staging {release} on new hosts")) as hold:
        refuse_unfinished(s)
        staged, failures = on_each(list(s.fleet.web), lambda host: staged_on(s, host))
        if failures:
            raise RolloutFailed(f"cannot tell which hosts lack {release}", failures)
        sources = [h for h in s.fleet.web if release in staged[h.name]]
        lacking = [h for h in s.fleet.web if release not in staged[h.name]]
        if not lacking or check:
            return [h.name for h in lacking]
        if not sources:
            raise RolloutFailed(f"no web host has {release} staged to copy it from; run a rollout with --build", {})
        source = sources[0]
        manifest = read_staged_manifest(s, source, release)
        for host in lacking:
            _, missing = ask_have(s, host, manifest)
            progress.phase(f"copying {release} from {source.name} to {host.name}")
            s.remote.relay(source, s.agent(source, "export", "--root", release_root(source), "--id", release),
                           json.dumps([e.sha256 for e in missing]).encode(), host, _stage_command(s, host, release))
        # republish the same desired state so the new hosts switch now
        change = s.store.rollback(to=release, token=hold.token)
        laggards = wait_for_acks(s.store, [h.name for h in lacking], change.epoch, change.revision, release, timeout,
                                 hold.check)
        if laggards:
            raise RolloutFailed(f"new hosts did not switch to {release}", laggards)
    return [h.name for h in lacking]
