"""Real servers on loopback for the tests and the benchmarks: a free port, a redis-server of our own.

Standard library and redis-py only (no pytest): bench/ imports this too, and `make bench` installs no test extras.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process we started on a loopback address, without persistence.

    port 0 takes a free port at the first start; a restart keeps it. Only the process this object
    started is ever stopped (by its pid), also when it fails to come up.
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    binary: str = "redis-server"
    maxclients: int | None = None
    #: socket_timeout of the clients from client(); None waits for ever.
    client_timeout: float | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server on {self.host}:{self.port} is already running")
        self.stop()  # reaps one that exited by itself
        if not self.port:
            self.port = free_port(self.host)
        extra = ["--maxclients", str(self.maxclients)] if self.maxclients is not None else []
        self.process = subprocess.Popen(
            [self.binary, "--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(timeout=10)
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on {self.host}:{self.port} exited with {self.process.returncode}")
            try:
                info = cast("dict[str, Any]", redis.Redis(host=self.host, port=self.port, socket_timeout=0.5).info())
            except redis.ConnectionError:
                info = {}
            if info.get("process_id") == self.process.pid:  # ours, not another server on the port
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server (pid {self.process.pid}) did not answer on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, SIGKILL after timeout (at once with kill=True: it loses its data); reaped."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def client(self, decode: bool = True) -> redis.Redis:
        """An admin client (the default user), for set-up and assertions."""
        return redis.Redis(host=self.host, port=self.port, decode_responses=decode, socket_timeout=self.client_timeout)

    def __enter__(self) -> RedisServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_store(client: redis.Redis, namespace: str, **options: Any) -> Any:
    """A publisher's Store on client, with the store made (`init`, as the release play does for a new fleet) if
    it has no epoch yet: changes are refused on an empty store."""
    from sync_agent.control.store import Store

    store = Store(client, namespace, **options)
    if store.snapshot().empty:
        store.init()
    return store
