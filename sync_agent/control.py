"""The control plane's one facade: what `fab` and the release play call.

Every fleet operation is written here once: rollout (manifest → what each
host lacks → one stream per host → publish → acknowledgements → HTTP check
from each host → roll back on failure → prune), rollback, prune, status and
shared data. Fabric tasks and the `release` role parse arguments, call
these, and print.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import redis

from .errors import FrontfleetError, UsageError
from .hoststatus import HostView, fleet_view, read_statuses, wait_for_acks
from .inventory import Fleet, Host, load_fleet
from .lock import DeployLock, default_holder
from .manifest import Entry, Manifest, build_manifest
from .protocol import PUBLISHER_USER
from .remote import HostUnreachable, Remote
from .staging import offer, open_offer, read_answer, write_blobs
from .store import History, Store, read_password, release_metadata

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT = 30.0
T = TypeVar("T")


class RolloutFailed(FrontfleetError):
    """A rollout stopped; the message names the host and the cause, and where the fleet is now."""


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


@dataclass
class Session:
    """One operation's connections: the fleet, SSH to its hosts, Redis (tunnelled unless direct)."""

    fleet: Fleet
    remote: Remote
    store: Store

    @property
    def lock(self) -> DeployLock:
        return DeployLock(self.store.client, self.fleet.namespace)

    @property
    def web_names(self) -> list[str]:
        return [h.name for h in self.fleet.web]


def publisher_password(fleet: Fleet) -> str:
    path = Path(str(fleet.setting("frontfleet_credentials_dir"))) / "redis-publisher"
    if not path.exists():
        raise UsageError(f"no publisher password at {path}; run `ansible-playbook deploy.yml` first, "
                         "which generates it")
    return read_password(path)


@contextmanager
def session(inventory: str | None = None) -> Iterator[Session]:
    """Open a session on the inventory's fleet (see inventory.default_inventory)."""
    fleet = load_fleet(inventory)
    password = publisher_password(fleet)
    address = str(fleet.setting("frontfleet_redis_address"))
    port = int(fleet.setting("frontfleet_redis_port"))
    with Remote(fleet) as remote:
        if fleet.setting("frontfleet_redis_direct"):
            yield _open(fleet, remote, address, port, password)
            return
        with remote.tunnel(fleet.redis, address, port) as (local_host, local_port):
            yield _open(fleet, remote, local_host, local_port, password)


def _open(fleet: Fleet, remote: Remote, host: str, port: int, password: str) -> Session:
    client = redis.Redis(host=host, port=port, username=PUBLISHER_USER, password=password, decode_responses=True,
                         socket_connect_timeout=5)
    return Session(fleet, remote, Store(client, fleet.namespace))


# --- staging ----------------------------------------------------------------------------------------


def _agent(host: Host) -> str:
    return f"{host.settings['frontfleet_agent_venv']}/bin/sync-agent"


def _root(host: Host) -> str:
    return str(host.settings["frontfleet_release_root"])


def ask_have(s: Session, host: Host, manifest: Manifest) -> tuple[bool, list[Entry]]:
    """(already staged, the entries whose content the host has nowhere)."""
    output = s.remote.run(host, [_agent(host), "have", "--root", _root(host)], stdin=manifest.dumps().encode())
    answer = json.loads(output)
    return bool(answer["staged"]), [Entry(e["path"], e["size"], e["sha256"]) for e in answer["missing"]]


def _stage_command(host: Host, release: str) -> list[str]:
    immutable = ",".join(host.settings["frontfleet_immutable_paths"])
    return [_agent(host), "stage", "--root", _root(host), "--id", release, "--immutable", immutable, "--json"]


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
    has the release, offer the manifest (`staging.offer`), send exactly the contents it lacks."""
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

    answer = json.loads(s.remote.stream(host, _stage_command(host, manifest.release_id), talk))
    result = HostStaging(host.name, bool(answer["already_staged"]), int(answer["files_written"]),
                         writers[0].count, int(answer["files_linked"]))
    progress.stage_finished(host.name, result)
    return result


def _host_pool(hosts: list[Host]) -> ThreadPoolExecutor:
    """Threads for work on hosts in parallel: one per host, at most 16."""
    return ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts))))


def _on_each(hosts: list[Host], work: Callable[[Host], T]) -> dict[str, T]:
    """Run work on every host in parallel; host name → result."""
    with _host_pool(hosts) as pool:
        return dict(zip([h.name for h in hosts], pool.map(work, hosts), strict=True))


def staged_on(s: Session, host: Host) -> list[str]:
    """The releases staged and verified on a host, from its own `sync-agent status`."""
    return list(json.loads(s.remote.run(host, [_agent(host), "status", "--root", _root(host), "--json"]))["staged"])


def stage_everywhere(s: Session, hosts: list[Host], stage_one: Callable[[Host], HostStaging]) -> dict[str, HostStaging]:
    """Stage on every host in parallel; the first failure names its host, after all have finished."""
    with _host_pool(hosts) as pool:
        futures = {host.name: pool.submit(stage_one, host) for host in hosts}
    failures: dict[str, str] = {}
    results: dict[str, HostStaging] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except FrontfleetError as err:
            failures[name] = err.why if isinstance(err, HostUnreachable) else str(err)
    if failures:
        detail = "; ".join(f"{host}: {why}" for host, why in sorted(failures.items()))
        raise RolloutFailed(f"staging failed, nothing was switched: {detail}")
    return results


# --- cutover ----------------------------------------------------------------------------------------


def http_check(s: Session, hosts: list[Host], manifest: Manifest) -> dict[str, str]:
    """From each host itself, GET its index.html and compare with the release's; host → why it failed."""
    index = next((e for e in manifest.entries if e.path == "index.html"), None)

    def check(host: Host) -> str:
        address = host.settings["frontfleet_http_address"] or "127.0.0.1"
        url = f"http://{address}:{host.settings['frontfleet_http_port']}/index.html"
        command = [_agent(host), "check-url", url]
        if index is not None:
            command += ["--sha256", index.sha256]
        try:
            s.remote.run(host, command, timeout=30)
        except HostUnreachable as err:
            return f"HTTP check failed: {err.why}"
        return ""

    return {host: why for host, why in _on_each(hosts, check).items() if why}


def _switch_and_confirm(s: Session, hosts: list[Host], release: str, timeout: float, publish: Callable[[], Any],
                        progress: Progress) -> tuple[int, dict[str, str]]:
    """Publish and wait for every host's acknowledgement; (revision, failures)."""
    change = publish()
    progress.waiting([h.name for h in hosts])
    failures = wait_for_acks(s.store, [h.name for h in hosts], change.epoch, change.revision, release, timeout)
    return int(change.revision), failures


def _skew(s: Session, hosts: list[str]) -> int | None:
    statuses, _ = read_statuses(s.store, hosts)
    stamps = [st.switched_at_ns for st in statuses.values() if st is not None and st.switched_at_ns]
    return max(stamps) - min(stamps) if len(stamps) == len(hosts) and stamps else None


def _undo(s: Session, saved: tuple[Any, History], hosts: list[str], timeout: float) -> str:
    """Put the saved desired state back and wait for the hosts that answer; say where the fleet is.

    A silent host (agent stopped, host down) is not waited for: it cannot confirm, and it
    resynchronises to the restored state from the snapshot when it comes back.
    """
    desired, history = saved
    change = s.store.restore(desired, history)
    if desired.fleet is None:
        return "there was no earlier release to go back to"
    statuses, now = read_statuses(s.store, hosts)
    silent = sorted(h for h, st in statuses.items() if st is None or st.silent(now))
    answering = [h for h in hosts if h not in silent]
    laggards = wait_for_acks(s.store, answering, change.epoch, change.revision, desired.fleet, timeout)
    where = f"every host that answers is back on {desired.fleet}"
    if laggards:
        detail = "; ".join(f"{h}: {why}" for h, why in laggards.items())
        where = f"rolled back to {desired.fleet}, but not every host confirmed it: {detail}"
    if silent:
        where += f" ({', '.join(silent)} silent: it takes {desired.fleet} from the snapshot when its agent is back)"
    return where


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
            token: str | None = None) -> RolloutResult:
    """Stage a build everywhere, then cut the whole fleet over at once; roll back on any failure."""
    progress = progress or Progress()
    started = time.monotonic()

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    if not build.is_dir():
        raise UsageError(f"the build {build} is not a directory; build your frontend first (e.g. `npm run build`)")
    hosts = list(s.fleet.web)
    with ThreadPoolExecutor(max_workers=1) as hashing:  # the SSH handshakes run while the build is hashed
        hashed = hashing.submit(build_manifest, build)
        _on_each(hosts, s.remote.connect)
        manifest = hashed.result()
    release = manifest.release_id
    if canary < 0 or (canary and canary >= len(hosts)):
        raise UsageError(f"--canary must be between 1 and {len(hosts) - 1} for a fleet of {len(hosts)} hosts")
    with s.lock.held(default_holder(f"rollout of {release}"), token=token) as held:
        desired, history = s.store.desired(), s.store.history()
        result = RolloutResult(release, desired.fleet)
        if check:
            for host in hosts:
                staged, missing = ask_have(s, host, manifest)
                result.staged[host.name] = HostStaging(host.name, staged, len(missing), sum(e.size for e in missing))
            result.switched, result.checked = desired.fleet != release or bool(desired.overrides), True
            return result
        progress.phase(f"staging {release} ({len(manifest.entries)} files, {manifest.total_bytes} bytes)")
        with ThreadPoolExecutor(max_workers=1) as compressing:  # while the hosts start and answer "staged?"
            offered = compressing.submit(offer, manifest)
            result.staged = stage_everywhere(s, hosts,
                                             lambda h: stage_from_build(s, h, manifest, offered, build, progress))
        result.timings["staged"] = elapsed()
        views = {v.host: v for v in fleet_view(s.store, [h.name for h in hosts])}
        if desired.fleet == release and not desired.overrides and all(
                v.status is not None and v.status.release == release for v in views.values()):
            progress.phase(f"{release} is already live everywhere")
            return result
        meta = release_metadata(label or default_label(build) or release, files=len(manifest.entries),
                                bytes=manifest.total_bytes)
        saved = (desired, history)
        steps: list[tuple[list[Host], Callable[[], Any]]] = []
        if canary:
            steps.append((hosts[:canary], lambda: s.store.override(release, [h.name for h in hosts[:canary]], meta)))
        steps.append((hosts, lambda: s.store.activate(release, meta)))
        for targets, publish in steps:
            progress.phase(f"switching {len(targets)} host(s) to {release}")
            revision, failures = _switch_and_confirm(s, targets, release, timeout, publish, progress)
            result.timings["acknowledged"] = elapsed()
            if not failures:
                failures = http_check(s, targets, manifest)
                result.timings["checked"] = elapsed()
            if failures:
                where = _undo(s, saved, [h.name for h in hosts], timeout)
                detail = "; ".join(f"{h}: {why}" for h, why in sorted(failures.items()))
                raise RolloutFailed(f"rollout of {release} failed: {detail}; {where}")
            result.revision = revision
        result.switched = True
        result.skew_ns = _skew(s, [h.name for h in hosts])
        result.pruned = prune(s, token=held)
        result.timings["pruned"] = elapsed()
    return result


# --- other operations -------------------------------------------------------------------------------


def rollback(s: Session, to: str | None = None, timeout: float = DEFAULT_ACK_TIMEOUT,
             token: str | None = None) -> tuple[str, int]:
    """One step back in the activation history (or to a named staged release); (release, revision)."""
    hosts = s.web_names
    with s.lock.held(default_holder("rollback"), token=token):
        if to is not None:
            _require_staged_everywhere(s, to)
        saved = (s.store.desired(), s.store.history())
        change = s.store.rollback(to)
        release = s.store.desired().fleet or ""
        laggards = wait_for_acks(s.store, hosts, change.epoch, change.revision, release, timeout)
        if laggards:
            where = _undo(s, saved, hosts, timeout)
            detail = "; ".join(f"{h}: {why}" for h, why in sorted(laggards.items()))
            raise RolloutFailed(f"rollback to {release} failed: {detail}; {where}")
    return release, int(change.revision)


def _require_staged_everywhere(s: Session, release: str) -> None:
    from .protocol import validate_release_id

    validate_release_id(release)

    staged = _on_each(list(s.fleet.web), lambda host: staged_on(s, host))
    missing = [host for host, releases in staged.items() if release not in releases]
    if missing:
        raise UsageError(f"{release} is not staged on {', '.join(missing)}; `fab releases` lists what can be "
                         "rolled back to")


def prune(s: Session, keep: int | None = None, token: str | None = None) -> dict[str, list[str]]:
    """Remove old releases on every host; never current, previous, or the next rollback target."""
    keep = keep or int(s.fleet.setting("frontfleet_keep_releases"))
    with s.lock.held(default_holder("prune"), token=token):
        protect = [r for r in (s.store.history().rollback_target, s.store.desired().fleet) if r]

        def prune_one(host: Host) -> list[str]:
            command = [_agent(host), "prune", "--root", _root(host), "--keep", str(keep), "--json"]
            for release in protect:
                command += ["--protect", release]
            return list(json.loads(s.remote.run(host, command))["removed"])

        return _on_each(list(s.fleet.web), prune_one)


def sync_new_hosts(s: Session, timeout: float = DEFAULT_ACK_TIMEOUT, check: bool = False,
                   progress: Progress | None = None) -> list[str]:
    """Bring web hosts that lack the current release up to it, relayed from a host that has it."""
    progress = progress or Progress()
    release = s.store.desired().fleet
    if release is None:
        return []
    with s.lock.held(default_holder(f"staging {release} on new hosts")):
        staged = _on_each(list(s.fleet.web), lambda host: staged_on(s, host))
        sources = [h for h in s.fleet.web if release in staged[h.name]]
        lacking = [h for h in s.fleet.web if release not in staged[h.name]]
        if not lacking or check:
            return [h.name for h in lacking]
        if not sources:
            raise RolloutFailed(f"no web host has {release} staged to copy it from; run a rollout with --build")
        source = sources[0]
        record = s.remote.run(source, ["cat", f"{_root(source)}/releases/{release}.manifest.json"])
        manifest = Manifest.from_json(record)
        for host in lacking:
            _, missing = ask_have(s, host, manifest)
            progress.phase(f"copying {release} from {source.name} to {host.name}")
            s.remote.relay(source, [_agent(source), "export", "--root", _root(source), "--id", release],
                           json.dumps([e.sha256 for e in missing]).encode(), host, _stage_command(host, release))
        change = s.store.rollback(to=release)  # republish the same desired state so the new hosts switch now
        failures = wait_for_acks(s.store, [h.name for h in lacking], change.epoch, change.revision, release, timeout)
        if failures:
            detail = "; ".join(f"{h}: {why}" for h, why in sorted(failures.items()))
            raise RolloutFailed(f"new hosts did not switch to {release}: {detail}")
    return [h.name for h in lacking]


def status(s: Session) -> list[HostView]:
    return fleet_view(s.store, s.web_names)


def status_rows(s: Session) -> list[dict[str, Any]]:
    """`fab status`: one row per inventory host, with the release's label and how long ago it was seen."""
    meta = s.store.release_metadata()
    now = s.store.server_time()
    rows = []
    for view in status(s):
        st = view.status
        rows.append({
            "host": view.host, "release": st.release if st else None,
            "label": meta.get(st.release, {}).get("label") if st and st.release else None,
            "revision": st.revision if st else None, "state": st.state if st else None,
            "seen": f"{now - st.seen_at:.0f}s ago" if st else None, "target": view.target,
            "healthy": view.healthy, "problem": view.problem or (st.error if st else ""),
        })
    return rows


def release_list(s: Session) -> list[dict[str, Any]]:
    """The activation history with metadata, oldest first; `current` marks the live release."""
    history = s.store.history()
    meta = s.store.release_metadata()
    return [{"release": release, "current": index == history.position, "label": meta.get(release, {}).get("label", ""),
             "who": meta.get(release, {}).get("who", ""), "when": meta.get(release, {}).get("when", "")}
            for index, release in enumerate(history.releases)]


def break_lock(s: Session) -> str:
    """Break the deploy lock (a dead holder's); returns who held it, "" when it was free."""
    return s.lock.break_lock(default_holder("lock --force"))
