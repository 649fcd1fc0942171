"""Just enough HTTP/1.1 for the agent's listener: parse a request head, write a response head. No I/O.

The listener sits behind nginx on a unix socket, so it needs no keep-alive, chunked bodies or request bodies:
a request is a head, a response ends when the connection closes (`Connection: close`). Anything else is refused
with a status that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEAD_BYTES = 8192  # a request head larger than this is refused (431)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case; a repeated one keeps the last


def parse_request(head: bytes) -> Request | None:
    """The request in head (up to and with the blank line), or None when it is not HTTP/1.x."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    parts = urlsplit(target)
    return Request(method, unquote(parts.path), dict(parse_qsl(parts.query)), headers)


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", *(f"{k}: {v}" for k, v in headers.items()),
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole short response: status, a plain-text body, and the connection closes after it."""
    body = f"{text}\n".encode()
    return response_head(status, {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
                                  "Cache-Control": "no-store", **(headers or {})}) + body
