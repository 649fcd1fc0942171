"""The live stream: every open page of the host gets the shared data and release switches as they land.

`sse` is the wire format, `hub` what to send (no I/O), `http` the little HTTP the listener speaks, `listener`
the socket (from systemd or bound), `server` the streams and their fan-out. docs/protocol.md, "The live stream".
"""

from __future__ import annotations

from .server import EVENTS_PATH, LiveServer, read_record

__all__ = ["EVENTS_PATH", "LiveServer", "read_record"]
