"""Fixtures for the agent tests: agents as real subprocesses under their ACL users, staged releases, a TCP proxy."""

from __future__ import annotations

import contextlib
import io
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from sync_agent.control.store import Store
from sync_agent.host.staging import receive_stream
from sync_agent.manifest import build_manifest
from sync_agent.protocol import PUBLISHER_USER, Keys, agent_acl_rules, agent_user, publisher_acl_rules
from sync_agent.stream import write_stream
from tests.builds import make_build
from tests.servers import new_store

from .sse_client import Stream

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "ff"
KEYS = Keys(NAMESPACE)
AGENT_PASSWORD = "agent-secret"
FAST_INTERVALS = {"heartbeat": 0.5, "reconcile": 1.0, "probe": 0.2, "probe_timeout": 1.0,
                  "reconnect_min": 0.05, "reconnect_max": 0.5}


def agent_command(config: Path) -> list[str]:
    """The command systemd runs, from this checkout's venv."""
    script = Path(sys.executable).parent / "sync-agent"
    if script.exists():
        return [str(script), "run", "--config", str(config)]
    return [sys.executable, "-c", "import sys; from sync_agent.host.agent import main; sys.exit(main(sys.argv[1]))",
            str(config)]


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll check until it returns something truthy; fail with its last value (or error) at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, redis.RedisError, KeyError) as err:
            last = err
        if time.monotonic() >= deadline:
            pytest.fail(f"not true after {timeout}s: {what or check}; last value {last!r}")
        time.sleep(interval)


def chained_change(client: redis.Redis, publish: dict[str, Any] | None = None) -> int:
    """Do by hand what the change scripts do (lua/common.lua): bump the revision, move the head, log the change;
    then publish `publish` as its event with its id and parent (None: a change whose event is lost). Returns the
    revision."""
    import json

    from sync_agent.protocol import new_change_id

    _, _, parent = (client.get(KEYS.head) or "::").partition(":")
    change_id = new_change_id()
    revision = int(client.incr(KEYS.revision))
    client.set(KEYS.head, f"{revision}:{change_id}")
    client.rpush(KEYS.log, f"{revision}:{change_id}")
    if publish is not None:
        client.publish(KEYS.events, json.dumps({"v": 1, "epoch": client.get(KEYS.epoch), "rev": revision,
                                                "id": change_id, "parent": parent, **publish}))
    return revision


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def create_agent_user(client: redis.Redis, host: str) -> None:
    client.execute_command("ACL", "SETUSER", agent_user(host), "on", f">{AGENT_PASSWORD}",
                           *agent_acl_rules(KEYS, host))


@dataclass
class Agent:
    """One sync agent subprocess, with its release root and its stdout log."""

    host: str
    root: Path
    config: Path
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log_handle: Any = None

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    def start(self, prefix: tuple[str, ...] = ()) -> Agent:
        """Run the agent (behind prefix: a command that execs it, such as systemd-socket-activate)."""
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process' life
        self.process = subprocess.Popen([*prefix, *agent_command(self.config)], stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=REPO)
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def data(self) -> Any:
        import json

        return json.loads((self.shared / "data.json").read_text())

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "live" / "current").rpartition("/")[2]
        except FileNotFoundError:
            return None

    def previous(self) -> str | None:
        try:
            return os.readlink(self.root / "live" / "previous").rpartition("/")[2]
        except FileNotFoundError:
            return None


@dataclass
class Fleet:
    """Agents against one Redis, and the publisher's Store to drive them."""

    tmp_path: Path
    redis_host: str
    redis_port: int
    admin: redis.Redis
    store: Store
    agents: list[Agent] = field(default_factory=list)

    def agent(self, host: str, *, start: bool = True, port: int | None = None, templates: dict[str, str] | None = None,
              intervals: dict[str, float] | None = None, env: dict[str, str] | None = None,
              extra: dict[str, dict[str, Any]] | None = None) -> Agent:
        base = self.tmp_path / host
        root = base / "srv"
        (root / "releases").mkdir(parents=True, exist_ok=True)
        templates_dir = base / "templates"
        templates_dir.mkdir(exist_ok=True)
        for name, text in (templates or {}).items():
            (templates_dir / name).write_text(text)
        password_file = base / "redis.password"
        password_file.write_text(AGENT_PASSWORD + "\n")
        create_agent_user(self.admin, host)
        sections: dict[str, dict[str, Any]] = {
            "agent": {"host": host, "namespace": NAMESPACE, "release_root": str(root),
                      "templates_dir": str(templates_dir), "log_level": "debug"},
            "redis": {"url": f"redis://{self.redis_host}:{port or self.redis_port}/0", "username": agent_user(host),
                      "password_file": str(password_file), "connect_timeout": 1.0, "command_timeout": 1.0},
            "intervals": {**FAST_INTERVALS, **(intervals or {})},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        config = write_config(base / "config.toml", sections)
        process_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        process_env.update(env or {})
        agent = Agent(host, root, config, base / "agent.log", process_env)
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def status(self, host: str) -> dict[str, Any]:
        """What the agent reports (NS:host:<host>, JSON), {} before it reported."""
        import json

        return dict(json.loads(self.admin.get(KEYS.host(host)) or "{}"))

    def wait_revision(self, agent: Agent, revision: int, timeout: float = 10.0) -> dict[str, Any]:
        epoch = self.admin.get(KEYS.epoch)

        def caught_up() -> dict[str, Any] | None:
            status = self.status(agent.host)
            if status.get("epoch") == epoch and int(status.get("revision", 0)) >= revision:
                return status
            return None

        return eventually(caught_up, timeout, what=f"{agent.host} at revision {revision} of epoch {epoch}")

    def wait_data(self, agent: Agent, expected: dict[str, Any], timeout: float = 10.0) -> None:
        eventually(lambda: agent.data() == expected, timeout, what=f"{agent.host} data.json == {expected}")

    def recreate_users(self) -> None:
        for agent in self.agents:
            create_agent_user(self.admin, agent.host)


@pytest.fixture
def fleet(fresh_redis: Any, tmp_path: Path) -> Iterator[Fleet]:
    admin = fresh_redis.client()
    with agents_on(Fleet(tmp_path, fresh_redis.host, fresh_redis.port, admin, new_store(admin, NAMESPACE))) as group:
        yield group


@contextlib.contextmanager
def agents_on(group: Fleet) -> Iterator[Fleet]:
    """The fleet's agents stopped on the way out; their logs printed (pytest shows them when the test failed), and
    a NOPERM or a traceback in any of them fails the test."""
    try:
        yield group
    finally:
        refused = []
        for agent in group.agents:
            agent.stop()
            text = agent.log()
            print(f"--- {agent.host} log ---\n{text}")  # shown by pytest when the test failed
            refused += [line for line in text.splitlines() if "NOPERM" in line or "Traceback" in line]
        group.admin.close()  # its connections, also one a Redis restart left dead: a socket left to the GC warns
        assert not refused, f"an agent sent a command its ACL user may not run, or crashed: {refused[:3]}"


def stage(root: Path, build: Path) -> str:
    """Stage a build directory under root the way a rollout does (manifest, stream, verify, rename)."""
    manifest = build_manifest(build)
    stream = io.BytesIO()
    write_stream(stream, manifest, build, [entry.sha256 for entry in manifest.entries])
    stream.seek(0)
    receive_stream(root, manifest.release_id, stream, [])
    return manifest.release_id


def named_build(tmp_path: Path, name: str) -> Path:
    """builds/NAME under tmp_path: an index.html and an assets/ bundle, both saying the name."""
    return make_build(tmp_path / "builds" / name, {"index.html": f"<html><body>{name}</body></html>\n".encode(),
                                                   f"assets/app-{name}.js": f"console.log({name!r});\n".encode()})


@pytest.fixture
def builds(tmp_path: Path) -> Callable[[str], Path]:
    return lambda name: named_build(tmp_path, name)


class FreezingProxy:
    """A TCP proxy to Redis that can stop forwarding on its open connections without closing them.

    That is a half-open connection as the agent sees it: the socket stays up, nothing comes
    through, and only an end-to-end probe notices. Connections made after freeze() work.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._frozen: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            frozen = threading.Event()
            with self._lock:
                self.connections += 1
                self._frozen.append(frozen)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, frozen), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, frozen: threading.Event) -> None:
        peers = {a: b, b: a}
        while not self._closing.is_set():
            if frozen.is_set():
                time.sleep(0.05)  # hold both sockets open, forward nothing
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
                if frozen.is_set():
                    continue
                for sock in ready:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    peers[sock].sendall(chunk)
            except (OSError, ValueError):
                break
        if not frozen.is_set() or self._closing.is_set():
            for sock in (a, b):
                sock.close()

    def freeze(self, only_first: bool = False) -> None:
        """Stop forwarding on every connection open now (or on the first one only); keep them open.

        The agent's first connection is its subscription (it subscribes before anything else).
        """
        with self._lock:
            for event in self._frozen[:1] if only_first else self._frozen:
                event.set()
        time.sleep(0.1)  # every pump thread has seen the flag

    def close(self) -> None:
        self._closing.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture
def proxy(fresh_redis: Any) -> Iterator[FreezingProxy]:
    tcp = FreezingProxy(fresh_redis.host, fresh_redis.port)
    try:
        yield tcp
    finally:
        tcp.close()


@pytest.fixture
def publisher_env(fresh_redis, tmp_path):
    """The publisher's ACL user, its password in a file, and the environment a user would set."""
    with fresh_redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", PUBLISHER_USER, "on", ">s3cret", *publisher_acl_rules(Keys("ff")))
        new_store(admin, "ff")  # a new store, as the release play makes one
    password_file = tmp_path / "publisher.password"
    password_file.write_text("s3cret\n")
    return {"FRONTFLEET_REDIS_URL": f"redis://{PUBLISHER_USER}@{fresh_redis.host}:{fresh_redis.port}/0",
            "FRONTFLEET_REDIS_PASSWORD_FILE": str(password_file), "FRONTFLEET_NAMESPACE": "ff",
            "PATH": "/usr/bin:/bin"}


# --- the live stream ------------------------------------------------------------------------------------


class Live:
    """Agents with the live stream on, each on its own socket, and the streams the test opened (closed after it)."""

    def __init__(self, fleet: Fleet, folder: Path) -> None:
        self.fleet = fleet
        self.folder = folder
        self.streams: list[Stream] = []

    def socket(self, host: str) -> Path:
        return self.folder / f"{host}.sock"

    def agent(self, host: str, start: bool = True, port: int | None = None, **live: Any) -> Agent:
        """An agent with [live] on (port: Redis' port to use, e.g. a proxy's); live: more [live] keys."""
        return self.fleet.agent(host, start=start, port=port,
                                extra={"live": {"socket": str(self.socket(host)), **live}})

    def stream(self, host: str, last_event_id: str | None = None, **options: Any) -> Stream:
        path = self.socket(host)
        eventually(path.exists, what=f"{path} is there")
        page = Stream(path, last_event_id, **options)
        self.streams.append(page)
        return page.open()


@pytest.fixture
def live(fleet: Fleet) -> Iterator[Live]:
    """A short folder for the sockets (a unix socket path holds at most 107 bytes; pytest's tmp_path is long)."""
    folder = Path(tempfile.mkdtemp(prefix="ff-live-", dir="/tmp"))
    helper = Live(fleet, folder)
    try:
        yield helper
    finally:
        for page in helper.streams:
            page.close()
        shutil.rmtree(folder, ignore_errors=True)
