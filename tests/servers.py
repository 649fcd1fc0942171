"""Real servers on loopback for the tests and the benchmarks: a free port, a redis-server of our own.

Standard library and redis-py only (no pytest): bench/ imports this too, and `make bench` installs no test extras.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
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
    #: more redis-server options, e.g. the redis role's memory limits (tests/redis_role.py)
    options: tuple[str, ...] = ()
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
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning", *extra, *self.options],
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
                with redis.Redis(host=self.host, port=self.port, socket_timeout=0.5) as probe:  # closed: no leak
                    info = cast("dict[str, Any]", probe.info())
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


def resp_command(*args: bytes) -> bytes:
    """One request in RESP, as a client sends it (split_command reads it back)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def split_command(buffer: bytes) -> tuple[list[bytes], bytes] | None:
    """The first whole RESP command in buffer (its arguments, the bytes after it), None until it is all there."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    if not buffer.startswith(b"*"):  # an inline command
        return buffer[:end].split(), buffer[end + 2:]
    args, position = [], end + 2
    for _ in range(int(buffer[1:end])):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        length = int(buffer[position + 1:end])
        if end + 2 + length + 2 > len(buffer):
            return None
        args.append(buffer[end + 2:end + 2 + length])
        position = end + 2 + length + 2
    return args, buffer[position:]


class LossyProxy:
    """A TCP proxy in front of a Redis that loses what we tell it to, as a network does: it forwards every command
    whole, except that for the next `times` commands matching a predicate it either loses the reply (forwards the
    command, throws away what comes back and cuts the connection) or loses the command itself (never forwards
    it, cuts the connection). Commands are read whole (RESP), so the predicate sees their arguments.

    Used by the integration tests and, with the controller's fab, by the fleet tests; started and closed by them.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server((listen_host, 0))
        self.address = listen_host
        self.port = int(self.listener.getsockname()[1])
        self._lock = threading.Lock()
        self._rule: tuple[Callable[[list[bytes]], bool], str, int] | None = None
        self.vanish = False  # after losing a reply, accept no connection any more (Redis unreachable from here on)
        self.lost: list[list[bytes]] = []  # the commands whose reply, or which, it lost
        self._sockets: list[socket.socket] = []
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply(self, matches: Callable[[list[bytes]], bool], times: int = 1, vanish: bool = False) -> None:
        with self._lock:
            self._rule = (matches, "reply", times)
            self.vanish = vanish

    def lose_command(self, matches: Callable[[list[bytes]], bool], times: int = 1) -> None:
        with self._lock:
            self._rule = (matches, "command", times)

    def _take(self, args: list[bytes]) -> str:
        """What to do with one command: "forward", "reply" (lose its reply) or "command" (lose it)."""
        with self._lock:
            if self._rule is None or not self._rule[0](args):
                return "forward"
            matches, how, times = self._rule
            self._rule = (matches, how, times - 1) if times > 1 else None
            self.lost.append(args)
            return how

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                if self._closing.is_set():
                    return
                continue
            upstream.settimeout(None)
            cut = threading.Event()
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, cut), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        buffer = b""
        try:
            while chunk := client.recv(65536):
                buffer += chunk
                while (found := split_command(buffer)) is not None:
                    args, rest = found
                    whole, buffer = buffer[:len(buffer) - len(rest)], rest
                    how = self._take(args)
                    if how == "command":
                        raise OSError("lost a command")
                    if how == "reply":
                        if self.vanish:
                            self._stop_listening()
                        cut.set()  # set before the command goes: whatever comes back after it is thrown away
                        upstream.sendall(whole)
                        time.sleep(0.2)  # Redis runs it and answers into the void
                        raise OSError("lost a reply")
                    upstream.sendall(whole)
        except OSError:
            pass
        finally:
            cut.set()
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _replies(self, upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while chunk := upstream.recv(65536):
                if cut.is_set():
                    return
                client.sendall(chunk)
        except OSError:
            pass

    def _stop_listening(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way: close() alone would not
        self.listener.close()

    def close(self) -> None:
        self._stop_listening()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_script_call(*words: bytes) -> Callable[[list[bytes]], bool]:
    """A predicate: an EVALSHA/EVAL whose arguments include every one of words (e.g. b"rollback")."""
    def matches(args: list[bytes]) -> bool:
        return bool(args) and args[0].upper() in (b"EVALSHA", b"EVAL") and all(word in args[1:] for word in words)
    return matches
