"""What the live stream sends, decided without sockets: frames for each update, and what a page that reconnects
with a Last-Event-ID gets from the ring, the store's log, or a snapshot."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sync_agent.errors import ConfigError
from sync_agent.host.config import parse_config
from sync_agent.host.live.http import parse_request
from sync_agent.host.live.hub import Entry, How, LiveState, Ring, StoreRecord, keys_changed_between, same_json
from sync_agent.host.live.sse import event_id, parse_event_id
from sync_agent.host.shared_data import ReleaseInfo
from sync_agent.protocol import DataChange, Desired, Message
from sync_agent.snapshot import Point

pytestmark = pytest.mark.unit

EPOCH = "e0e0e0e0e0e0e0e0"
V1 = ReleaseInfo("1111111111111111", "v1")


def cid(revision: int) -> str:
    return f"{revision:016x}"


def point(revision: int, epoch: str = EPOCH) -> Point:
    return Point(epoch, revision, cid(revision))


def data_message(revision: int, key: str, value: Any = None, op: str = "set") -> Message:
    return Message("data", EPOCH, revision, cid(revision), cid(revision - 1), data=DataChange(key, op, value))


def release_message(revision: int) -> Message:
    return Message("release", EPOCH, revision, cid(revision), cid(revision - 1), desired=Desired(V1.id))


def frames(raw: bytes) -> list[dict[str, Any]]:
    """The events in raw bytes: {"event", "id" (None when absent), "body"}."""
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in fields:
            out.append({"event": fields["event"], "id": fields.get("id"), "body": json.loads(fields["data"])})
    return out


def started(data: dict[str, Any] | None = None, revision: int = 5, ring: int = 1024) -> LiveState:
    state = LiveState("web1", ring_size=ring)
    assert state.update(point(revision), data or {"a": 1}, None, V1) == b""  # nobody connected before the first
    return state


def test_event_ids_name_epoch_revision_and_change_and_anything_else_is_refused() -> None:
    assert event_id(point(42)) == f"{EPOCH}:42:{cid(42)}"
    assert parse_event_id(f"{EPOCH}:42:{cid(42)}") == point(42)
    assert parse_event_id(f"{EPOCH}:7:") == Point(EPOCH, 7, None)
    for bad in ("", "x", f"{EPOCH}:x:{cid(1)}", f"{EPOCH}:1:nothex!", f"a\nb:1:{cid(1)}", f"{EPOCH}:1:{cid(1)}:9"):
        assert parse_event_id(bad) is None, bad
    assert event_id(Point("bad epoch", 1, cid(1))) is None


def test_each_change_that_follows_on_is_its_own_frame_with_its_id_and_a_switch_a_release_frame() -> None:
    state = started()
    out = frames(state.update(point(8), {"a": 2, "b": [1]},
                              [data_message(6, "a", 2), data_message(7, "b", [1]), release_message(8)],
                              ReleaseInfo("2222222222222222", "v2")))
    assert [(f["event"], f["id"]) for f in out] == [("data", event_id(point(6))), ("data", event_id(point(7))),
                                                     ("release", event_id(point(8)))]
    assert out[0]["body"] == {"epoch": EPOCH, "rev": 6, "id": cid(6), "op": "set", "key": "a", "value": 2}
    assert out[2]["body"]["release"] == {"id": "2222222222222222", "label": "v2"}
    assert state.point == point(8) and state.data == {"a": 2, "b": [1]}


def test_changes_that_do_not_follow_on_send_the_keys_that_differ_with_the_id_on_the_last() -> None:
    state = started({"a": 1, "same": "x", "flag": 1, "gone": 0})
    out = frames(state.update(point(9), {"a": 2, "same": "x", "flag": True, "new": None}, None, V1))
    assert [(f["body"]["op"], f["body"]["key"]) for f in out] == [("set", "a"), ("set", "flag"), ("del", "gone"),
                                                                   ("set", "new")]
    assert [f["id"] for f in out] == [None, None, None, event_id(point(9))]
    assert state.update(point(9), {"a": 2, "same": "x", "flag": True, "new": None}, [], V1) == b""


def test_a_new_epoch_sends_a_whole_snapshot_and_starts_the_ring_again() -> None:
    state = started()
    state.update(point(6), {"a": 2}, [data_message(6, "a", 2)], V1)
    other = Point("f1f1f1f1f1f1f1f1", 0, cid(99))
    out = frames(state.update(other, {"z": 1}, None, V1))
    assert [f["event"] for f in out] == ["snapshot"] and out[0]["body"]["data"] == {"z": 1}
    assert out[0]["body"]["host"] == "web1" and out[0]["id"] == event_id(other)
    assert state.ring.base == other and not state.ring.entries


def test_a_page_is_served_from_the_ring_the_store_or_a_snapshot() -> None:
    state = started(ring=3)
    for revision in range(6, 11):
        state.update(point(revision), {"a": revision}, [data_message(revision, "a", revision)], V1)
    assert state.plan(None).how is How.SNAPSHOT
    assert state.plan("garbage").how is How.SNAPSHOT
    assert state.plan(event_id(Point("f1f1f1f1f1f1f1f1", 9, cid(9)))).how is How.SNAPSHOT
    assert state.plan(event_id(point(12))).how is How.WAIT
    resumed = state.plan(event_id(point(8)))
    assert resumed.how is How.RING
    assert [(f["event"], f["id"]) for f in frames(resumed.frames)] == [
        ("data", event_id(point(9))), ("data", event_id(point(10))), ("release", event_id(point(10)))]
    assert [f["event"] for f in frames(state.plan(event_id(point(10))).frames)] == ["release"]
    assert state.plan(event_id(point(7))).how is How.RING  # the ring's base: everything after it
    assert state.plan(event_id(point(6))).how is How.STORE
    assert state.plan(event_id(Point(EPOCH, 10, cid(77)))).how is How.SNAPSHOT  # this revision, another history


def record(revisions: range, changes: list[dict[str, Any]], epoch: str = EPOCH) -> StoreRecord:
    return StoreRecord.parse(epoch.encode(), [f"{r}:{cid(r)}".encode() for r in revisions],
                             [json.dumps(c).encode() for c in reversed(changes)])


def test_the_stores_record_gives_the_keys_changed_since_or_why_it_cannot() -> None:
    changes = [{"what": "data set", "key": "a", "rev": 3, "id": cid(3)},
               {"what": "activate", "release": V1.id, "rev": 4, "id": cid(4)},
               {"what": "lock", "holder": "x"},
               {"what": "data del", "key": "b", "rev": 5, "id": cid(5)},
               {"what": "data set", "key": "a", "rev": 6, "id": cid(6)}]
    full = record(range(0, 7), changes)
    assert keys_changed_between(point(2), point(6), full) == {"a", "b"}
    assert keys_changed_between(point(4), point(6), full) == {"a", "b"}
    assert keys_changed_between(point(6), point(6), full) == set()
    assert "reach back" in str(keys_changed_between(point(1), point(6), full))
    assert "log does not hold" in str(keys_changed_between(Point(EPOCH, 2, cid(77)), point(6), full))
    assert "epoch" in str(keys_changed_between(point(2), point(6), record(range(0, 7), changes, "f1f1f1f1f1f1f1f1")))
    assert "this host's point" in str(keys_changed_between(point(2), point(7), full))
    odd = record(range(0, 7), [*changes[:-1], {"what": "bulk import", "rev": 6, "id": cid(6)}])
    assert "cannot replay" in str(keys_changed_between(point(2), point(6), odd))
    other = record(range(0, 7), [*changes[:-1], {"what": "data set", "key": "a", "rev": 6, "id": cid(66)}])
    assert "reach back" in str(keys_changed_between(point(2), point(6), other))  # an entry of another history


def test_a_private_change_in_the_stores_record_names_no_key_and_needs_no_snapshot() -> None:
    changes = [{"what": "private set", "key": "token", "private": True, "rev": 3, "id": cid(3)},
               {"what": "data set", "key": "a", "rev": 4, "id": cid(4)},
               {"what": "private del", "key": "token", "private": True, "rev": 5, "id": cid(5)}]
    assert keys_changed_between(point(2), point(5), record(range(0, 6), changes)) == {"a"}


def test_a_resume_from_the_store_sends_current_values_then_the_release() -> None:
    state = started({"a": 1, "b": 2}, revision=2)
    state.update(point(6), {"a": 9}, None, V1)
    changes = [{"what": "data set", "key": "a", "rev": r, "id": cid(r)} for r in (3, 4)] + [
        {"what": "data del", "key": "b", "rev": 5, "id": cid(5)}, {"what": "data set", "key": "a", "rev": 6,
                                                                     "id": cid(6)}]
    resumed = state.from_record(point(2), record(range(0, 7), changes))
    assert resumed.how is How.STORE
    out = frames(resumed.frames)
    assert [(f["event"], f["body"].get("op"), f["body"].get("value"), f["id"]) for f in out] == [
        ("data", "set", 9, None), ("data", "del", None, event_id(point(6))),
        ("release", None, None, event_id(point(6)))]
    assert state.from_record(point(1), record(range(0, 7), changes)).how is How.SNAPSHOT


def test_the_ring_keeps_the_last_changes_by_count_and_bytes() -> None:
    ring = Ring(size=2, max_bytes=10)
    ring.reset(point(0))
    for revision in (1, 2, 3):
        ring.append(Entry(point(revision), b"x"))
    assert ring.base == point(1) and ring.after(point(1)) == b"xx" and ring.after(point(0)) is None
    ring.append(Entry(point(4), b"y" * 10))
    assert ring.base == point(3) and ring.after(point(3)) == b"y" * 10


def test_json_values_compare_with_their_types() -> None:
    assert same_json({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert not same_json(1, True) and not same_json(1, 1.0) and not same_json([1], [True])
    assert not same_json({"a": 1}, {"a": 1, "b": 2})


def test_a_request_head_is_parsed_or_refused() -> None:
    request = parse_request(b"GET /_sync/events?last_event_id=e%3A1%3A HTTP/1.1\r\nLast-Event-ID: x\r\nHost: h\r\n\r\n")
    assert request is not None and request.path == "/_sync/events"
    assert request.query == {"last_event_id": "e:1:"} and request.headers["last-event-id"] == "x"
    for bad in (b"GET /\r\n\r\n", b"GET x HTTP/1.1\r\n\r\n", b"GET / SPDY/3\r\n\r\n", b"GET / HTTP/1.1\r\nbad\r\n\r\n"):
        assert parse_request(bad) is None, bad


BASE = {"agent": {"host": "web1", "release_root": "/srv/app"}, "redis": {"url": "redis://127.0.0.1:6379/0"}}


def test_the_live_section_turns_the_stream_on_and_checks_its_keys() -> None:
    assert parse_config(BASE).live is None
    live = parse_config({**BASE, "live": {"socket": "/run/sync-agent/live.sock", "max_clients": 5, "heartbeat": 2}})
    assert live.live is not None and (live.live.max_clients, live.live.heartbeat, live.live.ring) == (5, 2.0, 1024)
    for section, message in (({"max_clients": 5}, "live.socket is not"), ({"socket": "live.sock"}, "absolute"),
                             ({"socket": "/x", "ring": 0}, "at least 1"), ({"socket": "/x", "ring": 1.5}, "integer"),
                             ({"socket": "/" + "x" * 120}, "longer"), ({"socket": "/x", "heartbeat": -1}, "positive")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**BASE, "live": section})


def test_a_point_that_occurs_twice_resumes_from_its_first_entry() -> None:
    ring = Ring(size=4)
    ring.reset(point(0))
    for entry in (Entry(point(1), b"a"), Entry(point(2), b"b"), Entry(point(2), b"c"), Entry(point(3), b"d")):
        ring.append(entry)
    assert ring.after(point(2)) == b"cd" and ring.after(point(3)) == b"" and ring.after(point(1)) == b"bcd"
    ring.append(Entry(point(4), b"e"))  # evicts point 1: base
    ring.append(Entry(point(5), b"f"))  # evicts the first entry of point 2: base again, the second is not indexed
    assert ring.base == point(2) and ring.after(point(2)) == b"cdef" and ring.after(point(4)) == b"f"
