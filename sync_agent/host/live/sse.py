"""The live stream's wire format: Server-Sent Events frames, and the event id that names a change. No I/O.

Every frame is one SSE event (`event:`, optional `id:`, one `data:` line of compact JSON: JSON escapes every
line break inside strings, so a value can never end a frame early). The id is `<epoch>:<revision>:<change id>`,
the point in the store's history the client holds once it has read the event; a browser sends it back as
`Last-Event-ID` when it reconnects (docs/protocol.md, "The live stream").
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...protocol import is_change_id
from ...snapshot import Point
from ..shared_data import ReleaseInfo

_EPOCH = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # what may stand in an id line: no ':', no line break
MAX_REVISION_DIGITS = 18


def event_id(point: Point) -> str | None:
    """The SSE id naming point, or None when the epoch holds characters an id line cannot carry (the client then
    keeps its previous id, and resumes from a snapshot at worst)."""
    if not _EPOCH.match(point.epoch):
        return None
    return f"{point.epoch}:{point.revision}:{point.id or ''}"


def parse_event_id(text: str) -> Point | None:
    """The point a Last-Event-ID names, or None for anything that is not one of ours (it gets a snapshot)."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        return None
    epoch, revision, change_id = parts
    if not _EPOCH.match(epoch) or not revision.isdigit() or len(revision) > MAX_REVISION_DIGITS:
        return None
    if change_id and not is_change_id(change_id):
        return None
    return Point(epoch, int(revision), change_id or None)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def frame(event: str, payload: dict[str, Any], point: Point | None = None) -> bytes:
    """One SSE event; with point, its `id:` line names it."""
    ident = event_id(point) if point is not None else None
    head = f"event: {event}\nid: {ident}\n" if ident is not None else f"event: {event}\n"
    return f"{head}data: {_json(payload)}\n\n".encode()


def comment(text: str) -> bytes:
    """An SSE comment (ignored by EventSource): says what a stream starts with, for people and tests."""
    return f": {' '.join(text.split())}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """How long a browser waits before it reconnects (EventSource's `retry:` field)."""
    return f"retry: {milliseconds}\n\n".encode()


def _where(point: Point) -> dict[str, Any]:
    return {"epoch": point.epoch, "rev": point.revision, "id": point.id}


def release_json(release: ReleaseInfo | None) -> dict[str, str] | None:
    return {"id": release.id, "label": release.label} if release is not None else None


def snapshot_frame(point: Point, data: dict[str, Any], release: ReleaseInfo | None, host: str) -> bytes:
    """Everything public this host serves, at point: the first event of a stream that cannot resume."""
    return frame("snapshot", {**_where(point), "host": host, "data": data, "release": release_json(release)}, point)


def data_frame(point: Point, key: str, value: Any, present: bool, with_id: bool = True) -> bytes:
    """A key set to value (present) or deleted, as of point. Without its id when more frames of the same point
    follow: a client cut off half-way then resumes from before them all."""
    body = {**_where(point), "op": "set", "key": key, "value": value} if present else {
        **_where(point), "op": "del", "key": key}
    return frame("data", body, point if with_id else None)


def release_frame(point: Point, release: ReleaseInfo | None) -> bytes:
    """The release this host serves (id, label; null when none), as of point."""
    return frame("release", {**_where(point), "release": release_json(release)}, point)
