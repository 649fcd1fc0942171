"""A minimal Server-Sent Events client over the agent's unix socket, for the live stream's tests: what a browser's
EventSource reads, frame by frame, comments included."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Event:
    type: str
    id: str | None
    body: Any


@dataclass
class Stream:
    """One GET /_sync/events. status and headers come with open(); events are read on demand."""

    path: Path
    last_event_id: str | None = None
    query: str = ""
    receive_buffer: int | None = None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    body: bytes = b""
    sock: socket.socket | None = None
    _buffer: bytes = b""

    def open(self, timeout: float = 10.0) -> Stream:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(str(self.path))
        extra = f"Last-Event-ID: {self.last_event_id}\r\n" if self.last_event_id else ""
        self.sock.sendall(f"GET /_sync/events{self.query} HTTP/1.1\r\nHost: web\r\nAccept: text/event-stream\r\n"
                          f"{extra}\r\n".encode())
        while b"\r\n\r\n" not in self._buffer:
            self._read(timeout)
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if self.status != 200:  # a whole response: read to the end
            while True:
                try:
                    self._read(timeout)
                except EOFError:
                    break
            self.body = self._buffer
        return self

    def _read(self, timeout: float) -> None:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the stream")
        self._buffer += chunk

    def next(self, timeout: float = 10.0) -> Event:
        """The next event (comments and retry fields are kept aside); EOFError when the server closed."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" not in self._buffer:
                self._read(max(0.01, deadline - time.monotonic()))
            block, _, self._buffer = self._buffer.partition(b"\n\n")
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                if not name:
                    self.comments.append(value.strip())
                else:
                    fields[name] = value[1:] if value.startswith(" ") else value
            if "data" in fields:
                return Event(fields.get("event", "message"), fields.get("id"), json.loads(fields["data"]))

    def read_comments(self, timeout: float = 0.5) -> list[str]:
        """Read what has come (comments only, an event is an error here) and return every comment so far."""
        try:
            self._read(timeout)
        except TimeoutError:
            return self.comments
        while b"\n\n" in self._buffer:
            block, _, self._buffer = self._buffer.partition(b"\n\n")
            for line in block.decode().split("\n"):
                assert line.startswith(":"), f"an event where only comments were expected: {block!r}"
                self.comments.append(line[1:].strip())
        return self.comments

    def events(self, count: int, timeout: float = 10.0) -> list[Event]:
        return [self.next(timeout) for _ in range(count)]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
