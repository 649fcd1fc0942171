"""The protocol, described once: keys, channels, messages, limits and ACL rules.

Everything that talks to Redis (the agent, the control plane, the ACL
generator, the docs in docs/protocol.md) takes its names from here.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

PROTOCOL_VERSION = 1

# Limits. A message larger than MAX_MESSAGE_BYTES is refused by the agent unread.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_VALUE_BYTES = 512 * 1024
MAX_KEY_LENGTH = 128
MAX_ID_LENGTH = 64
MAX_LABEL_LENGTH = 200
# What a data value may be, so that every agent can parse, store and serve it (docs/protocol.md, "Limits").
MAX_DEPTH = 32  # nesting of arrays and objects in one value
MAX_DATA_KEYS = 1000  # keys in NS:data, checked by lua/data.lua
MAX_DATA_BYTES = 8 * 1024 * 1024  # key + value bytes of the whole NS:data, checked by lua/data.lua
# Private data (NS:private) has caps of its own, checked by the same script: a few tokens and internal URLs, which
# must never crowd out the public data set, nor it them. Small, so that Redis' memory budget (docs/reliability.md)
# holds it inside its slack: a snapshot and a recovery carry it beside the public data.
MAX_PRIVATE_KEYS = 100
MAX_PRIVATE_BYTES = 256 * 1024
LOG_LENGTH = 1024  # (revision, change id) pairs NS:log keeps, newest last (docs/protocol.md, "The change chain")
CHANGES_LENGTH = 1000  # entries NS:changes (the record of who changed what) keeps, newest first
REQUEST_TTL_MS = 24 * 3600 * 1000  # how long a release request's outcome is kept for its retries
# A host's status (NS:host:<host>, compact JSON) is a few hundred bytes; the controller reads at most this much of it
# as a status and shows a larger one as unreadable. Redis' proto-max-bulk-len (the redis role) caps what an agent
# can store there at all; the publisher's largest single argument is a data value (MAX_VALUE_BYTES), under it.
MAX_STATUS_BYTES = 64 * 1024
MAX_STATUS_ERROR = 4000  # characters of the status' `error` an agent writes; a longer one is cut, marked with …

# Release ids, data keys, host names and namespaces share one safe charset:
# no "/", no "..", no leading "." — they become file names and key suffixes.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_CHANGE_ID = re.compile(r"^[0-9a-f]{8,32}$")

# "private": a change of a private data key, as "data" but kept apart; an agent from before it skips the type (it
# never writes the value anywhere) and reads the snapshot at its next event (docs/protocol.md, "Private data").
MESSAGE_TYPES = ("data", "release", "private")
DATA_MESSAGE_TYPES = ("data", "private")
DATA_OPS = ("set", "del")
STATES = ("ready", "degraded")


def _check_name(kind: str, value: object, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{kind} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ProtocolError(f"{kind} {value[:40]!r}… is longer than {max_length} characters")
    if not _SAFE_NAME.match(value) or ".." in value:
        raise ProtocolError(
            f"{kind} {value!r} has characters outside A-Z a-z 0-9 _ . - "
            "(no '/', no '..', no leading '.')"
        )
    return value


def validate_release_id(value: object) -> str:
    """A release id is a directory name under releases/: refuse anything that could escape it."""
    return _check_name("release id", value, MAX_ID_LENGTH)


def validate_data_key(value: object) -> str:
    return _check_name("data key", value, MAX_KEY_LENGTH)


def validate_host(value: object) -> str:
    return _check_name("host name", value, MAX_KEY_LENGTH)


def new_change_id() -> str:
    """A change's identity: random, so two changes never share one, whoever makes them."""
    return uuid.uuid4().hex[:16]


def is_change_id(value: object) -> bool:
    return isinstance(value, str) and bool(_CHANGE_ID.match(value))


def validate_namespace(value: object) -> str:
    """A namespace is the first part of every key and ACL pattern, so it has no `:` of its own: the agent's rule
    `%R~shop:*` would otherwise also grant fleet `shop:eu`'s keys (and `shop:status:*` its status keys)."""
    if isinstance(value, str) and ":" in value:
        raise ProtocolError(
            f"namespace {value!r} contains ':': the ACL rules of a fleet named {value.partition(':')[0]!r} "
            f"({value.partition(':')[0]}:*) would also cover its keys. Use letters, digits, '_', '.', '-' "
            f"(e.g. {value.replace(':', '-')!r})"
        )
    return _check_name("namespace", value, MAX_KEY_LENGTH)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number (JSON has none; a browser's JSON.parse refuses it)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is not a finite number (it overflows a double)")
    return number


def _bounded_int(text: str) -> int | float:
    if len(text) > 309:  # more digits than any finite double has; int() would also hit Python's digit limit
        raise ValueError(f"{text[:40]}… is not a finite number (it overflows a double)")
    return int(text)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when a parsed JSON value nests arrays and objects more than limit levels deep (a scalar is 0 levels).
    Walked without recursion, and it stops at the first path past the limit."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def load_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON that an agent can serve: UTF-8, finite numbers only, nested at most max_depth deep.

    Any failure is a ProtocolError, whatever the cause (bad UTF-8, a RecursionError of a hostile nesting, a
    number that overflows): input from Redis or the channel must never raise anything else."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"not valid JSON ({err.msg} at position {err.pos})") from err
    except RecursionError as err:
        raise ProtocolError(f"nested deeper than {max_depth} levels") from err
    except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(str(err)) from err
    if nested_deeper_than(value, max_depth):
        raise ProtocolError(f"nested deeper than {max_depth} levels (the limit of a data value)")
    return value


def validate_json_value(text: str) -> str:
    """A data value is a JSON document agents can serve, up to MAX_VALUE_BYTES; returns it compacted."""
    size = len(text.encode())
    if size > MAX_VALUE_BYTES:
        raise ProtocolError(f"value is {size} bytes; the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)")
    try:
        parsed = load_json(text)
    except ProtocolError as err:
        hint = "; quote strings twice, e.g. '\"on\"'" if "not valid JSON" in str(err) else ""
        raise ProtocolError(f"value refused: {err}{hint}") from err
    return compact_json(parsed)


def compact_json(value: Any) -> str:
    """A data value as the store keeps it: compact, UTF-8 as is (equal values give equal text)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Keys:
    """Every key and channel of one namespace."""

    namespace: str

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    @property
    def epoch(self) -> str:
        return f"{self.namespace}:epoch"

    @property
    def revision(self) -> str:
        return f"{self.namespace}:rev"

    @property
    def head(self) -> str:
        """String "<revision>:<change id>": the last change made through the chain. A revision past it means a
        write that kept no chain (an older controller): the store is foreign."""
        return f"{self.namespace}:head"

    @property
    def log(self) -> str:
        """List of "<revision>:<change id>", oldest first, at most LOG_LENGTH: the recent history a snapshot
        carries, so an agent can tell whether what it applied is part of the store's past."""
        return f"{self.namespace}:log"

    @property
    def origin(self) -> str:
        """JSON: how this epoch was made ("init", "import", "recover") and what it continues from."""
        return f"{self.namespace}:epoch:origin"

    @property
    def data(self) -> str:
        return f"{self.namespace}:data"

    @property
    def private(self) -> str:
        """Hash: private data key → compact JSON value; reaches agents and their private templates, never a byte
        that nginx serves or the live stream carries."""
        return f"{self.namespace}:private"

    @property
    def desired(self) -> str:
        """Hash: field "fleet" is the fleet-wide release, "host:<name>" a per-host override."""
        return f"{self.namespace}:desired"

    @property
    def history(self) -> str:
        """List of release ids in activation order."""
        return f"{self.namespace}:history"

    @property
    def history_position(self) -> str:
        """Index into history of the fleet's current release."""
        return f"{self.namespace}:history:pos"

    @property
    def releases(self) -> str:
        """Hash: release id → JSON metadata (label, who, when, files, bytes)."""
        return f"{self.namespace}:releases"

    @property
    def lock(self) -> str:
        return f"{self.namespace}:lock"

    @property
    def changes(self) -> str:
        """List of JSON entries, newest first, at most CHANGES_LENGTH: who changed what and when (`fab log`)."""
        return f"{self.namespace}:changes"

    @property
    def rollout(self) -> str:
        """JSON: the rollout that has switched hosts and not finished, and the state to go back to."""
        return f"{self.namespace}:rollout"

    def request(self, request_id: str) -> str:
        """The outcome of one release request, kept REQUEST_TTL_MS for its retries ("abandoned": never made)."""
        return f"{self.namespace}:request:{request_id}"

    def host(self, host: str) -> str:
        """String, compact JSON: what the agent on host reports (HostStatus), written whole with SET."""
        return f"{self.namespace}:host:{validate_host(host)}"

    def status(self, host: str) -> str:
        """The hash agents before the `NS:host:<host>` key wrote their status to; read as a fallback while such
        an agent runs, removed once the host reports on its new key (docs/upgrading.md)."""
        return f"{self.namespace}:status:{validate_host(host)}"

    @property
    def events(self) -> str:
        """The channel every change is published on."""
        return f"{self.namespace}:events"

    def probe(self, host: str) -> str:
        """A host's own channel for its end-to-end liveness probe."""
        return f"{self.namespace}:probe:{validate_host(host)}"


OVERRIDE_PREFIX = "host:"
FLEET_FIELD = "fleet"


@dataclass(frozen=True)
class Desired:
    """The desired release: a fleet-wide value plus per-host overrides."""

    fleet: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)

    def target_for(self, host: str) -> str | None:
        return self.overrides.get(host, self.fleet)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Desired:
        fleet = raw.get(FLEET_FIELD)
        overrides = {
            name[len(OVERRIDE_PREFIX):]: value for name, value in raw.items() if name.startswith(OVERRIDE_PREFIX)
        }
        return cls(fleet=validate_release_id(fleet) if fleet else None,
                   overrides={validate_host(h): validate_release_id(r) for h, r in overrides.items()})

    def to_json(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "overrides": dict(self.overrides)}


@dataclass(frozen=True)
class DataChange:
    key: str
    op: str  # "set" or "del"
    value: Any = None  # the parsed JSON value for "set"

    def apply(self, values: dict[str, Any]) -> None:
        """Make this change to a data set (the agent's, the live stream's, public or private alike)."""
        if self.op == "set":
            values[self.key] = self.value
        else:
            values.pop(self.key, None)


@dataclass(frozen=True)
class Message:
    """One event on the namespace's channel, validated."""

    type: str
    epoch: str
    revision: int
    id: str | None = None  # the change's id; None from a controller that keeps no chain
    parent: str | None = None  # the id of the change before it ("" for the first change of a chain)
    data: DataChange | None = None  # a public data change: what data.json, templates and the live stream show
    # A private data change ("private" events), never in `data`: whatever reads the public change (data.json, the
    # live stream) cannot meet a private value by mistake.
    private: DataChange | None = None
    desired: Desired | None = None
    switch_at: int | None = None  # release events: when to rename current, µs since the epoch on Redis' clock


def parse_message(raw: bytes | str) -> Message:
    """Validate an event from the channel; raise ProtocolError on anything unexpected."""
    size = len(raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    try:
        body = load_json(raw, max_depth=MAX_DEPTH + 1)  # the value sits one level inside the message
    except ProtocolError as err:
        raise ProtocolError(f"message refused: {err}") from err
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object")
    if body.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"message has protocol version {body.get('v')!r}; this agent speaks {PROTOCOL_VERSION}")
    kind = body.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    epoch = body.get("epoch")
    revision = body.get("rev")
    if not isinstance(epoch, str) or not epoch or len(epoch) > MAX_ID_LENGTH:
        raise ProtocolError("message has no valid epoch")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:  # 0: a new epoch's seed
        raise ProtocolError("message has no valid revision")
    change_id = body.get("id") if is_change_id(body.get("id")) else None
    parent = body.get("parent") if body.get("parent") == "" or is_change_id(body.get("parent")) else None
    if kind in DATA_MESSAGE_TYPES:
        op = body.get("op")
        if op not in DATA_OPS:
            raise ProtocolError(f"{kind} message has unknown op {op!r}")
        key = validate_data_key(body.get("key"))
        if op == "set" and "value" not in body:
            raise ProtocolError(f"{kind} set message has no value")
        change = DataChange(key, op, body.get("value"))
        if kind == "private":
            return Message(kind, epoch, revision, change_id, parent, private=change)
        return Message(kind, epoch, revision, change_id, parent, data=change)
    desired = body.get("desired")
    if not isinstance(desired, dict):
        raise ProtocolError("release message has no desired state")
    fleet = desired.get("fleet")
    overrides = desired.get("overrides", {})
    if not isinstance(overrides, dict):
        raise ProtocolError("release message overrides must be an object")
    switch_at = body.get("switch_at")
    if switch_at is not None and (not isinstance(switch_at, int) or isinstance(switch_at, bool) or switch_at < 1):
        raise ProtocolError(f"release message switch_at must be a positive integer (µs), got {switch_at!r}")
    return Message(
        kind, epoch, revision, change_id, parent,
        desired=Desired(
            fleet=validate_release_id(fleet) if fleet is not None else None,
            overrides={validate_host(h): validate_release_id(r) for h, r in overrides.items()},
        ),
        switch_at=switch_at,
    )


# --- ACL rules, generated from the key and channel names above ----------------------------------

# What an agent may run, by purpose. Key and channel patterns restrict the arguments.
# No SELECT: the key patterns hold in every database, so each of them would give an agent one more status key.
# Agents use database 0 (redis-py sends no SELECT for it).
_AGENT_CONNECTION = ("+ping", "+client|id", "+auth", "+quit", "+reset", "+time")
_AGENT_READ = ("+get", "+mget", "+hget", "+hgetall", "+hmget", "+lrange", "+llen", "+exists", "+multi", "+exec",
               "+discard")
# SET alone: one string value, replaced whole, so what an agent stores is capped by Redis' proto-max-bulk-len. No
# HSET/APPEND/SETRANGE (a value that grows), no DEL/RENAME/EXPIRE; SET's GET option needs a read rule on the key
# that this selector's %W~ does not give. Neither CLIENT SETNAME nor HELLO (which can set a name too): a client's
# name is memory that maxmemory-clients does not count (Redis 7.0); the agent speaks RESP2 and names no client.
_AGENT_STATUS_WRITE = ("+set",)
_AGENT_SUBSCRIBE = ("+subscribe", "+unsubscribe")


def agent_acl_rules(keys: Keys, host: str) -> list[str]:
    """ACL SETUSER rules (without user name or password) for host's agent.

    The root permissions read the namespace, SET the host's own status key
    (`NS:host:<host>`; it can write nothing else) and subscribe to the events
    channel and the host's probe channel. Redis' `&channel` allows publish and subscribe alike, so PUBLISH lives in a
    selector (Redis 7) limited to the probe channel.
    """
    probe = keys.probe(host)
    return [
        "resetkeys", "resetchannels", "-@all",
        *_AGENT_CONNECTION, *_AGENT_READ, *_AGENT_STATUS_WRITE, *_AGENT_SUBSCRIBE,
        f"%R~{keys.namespace}:*",
        f"%W~{keys.host(host)}",
        f"&{keys.events}",
        f"&{probe}",
        f"({' '.join(('+publish', f'&{probe}'))})",
    ]


def publisher_acl_rules(keys: Keys) -> list[str]:
    """ACL SETUSER rules for the publisher (Fabric, the release play): the namespace and nothing else."""
    return [
        "resetkeys", "resetchannels", "-@all",
        "+@read", "+@write", "+@connection", "+@transaction", "+@pubsub",
        "+eval", "+evalsha", "+script|load", "+script|exists", "+time",
        "-@dangerous",
        f"~{keys.namespace}:*",
        f"&{keys.namespace}:*",
    ]


def acl_setuser_line(user: str, rules: list[str], password: str | None = None,
                     password_sha256: str | None = None) -> str:
    """One users.acl line. The password as `>plain`, as `#sha256` (kept out of the file), or `>PASSWORD`."""
    if password_sha256 is not None:
        secret = f"#{password_sha256}"
    else:
        secret = f">{password}" if password is not None else ">PASSWORD"
    return " ".join(["user", user, "on", "resetpass", secret, *rules])


PUBLISHER_USER = "publisher"


def agent_user(host: str) -> str:
    return f"agent-{validate_host(host)}"


def acl_user(keys: Keys, host: str | None) -> tuple[str, list[str]]:
    """(user name, rules) of host's agent, or of the publisher when host is None."""
    if host is None:
        return PUBLISHER_USER, publisher_acl_rules(keys)
    return agent_user(host), agent_acl_rules(keys, host)



# --- the per-host status -------------------------------------------------------------------------

SILENT_AFTER_HEARTBEATS = 3


@dataclass(frozen=True)
class HostStatus:
    """What an agent reports in `<ns>:host:<host>`: this, as one compact JSON object (never expires)."""

    release: str = ""
    previous: str = ""
    revision: int = 0
    epoch: str = ""
    state: str = "degraded"  # "ready" or "degraded"
    error: str = ""  # the last error, "" when none
    switched_at_ns: int = 0  # the agent's clock at its last switch
    seen_at: float = 0.0  # Redis' own clock (TIME) at the last heartbeat
    heartbeat: float = 5.0  # seconds between heartbeats
    agent_version: str = ""
    protocol: int = PROTOCOL_VERSION
    pid: int = 0
    # Counters since the agent started (an older controller ignores them): batches of events processed, snapshot
    # reads that events triggered (a gap, another epoch: at most one per batch), bad inputs skipped.
    batches: int = 0
    resyncs: int = 0
    skipped: int = 0

    def to_json(self) -> str:
        """The value an agent SETs: compact JSON, its error cut to MAX_STATUS_ERROR characters."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if len(self.error) > MAX_STATUS_ERROR:
            fields["error"] = self.error[:MAX_STATUS_ERROR - 1] + "…"
        return compact_json(fields)

    @classmethod
    def from_json(cls, raw: bytes | str) -> HostStatus:
        """Parse what an agent wrote, as hostile input: anything but a JSON object of at most MAX_STATUS_BYTES
        (nested at most MAX_DEPTH) is a ProtocolError; unknown fields are ignored, a field of the wrong type takes
        its default (as from_hash)."""
        if len(raw) > MAX_STATUS_BYTES:
            raise ProtocolError(f"its status is {len(raw)} bytes, over the {MAX_STATUS_BYTES} a status may have")
        body = load_json(raw)  # a later agent's field may be an object: ignored, as every unknown field
        if not isinstance(body, dict):
            raise ProtocolError("its status is not a JSON object")
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            value = body.get(name)
            if spec.type == "str" and isinstance(value, str):
                values[name] = value
            elif spec.type in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
                values[name] = value if spec.type == "int" else float(value)
            elif spec.type == "float" and isinstance(value, float):
                values[name] = value
        return cls(**values)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> HostStatus:
        """Parse the status hash of an agent from before `NS:host:<host>` (Keys.status); unknown fields are
        ignored, missing ones take defaults."""
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in raw:
                continue
            kind = spec.type
            try:
                values[name] = int(raw[name]) if kind == "int" else float(raw[name]) if kind == "float" else raw[name]
            except ValueError:
                continue
        return cls(**values)

    def silent(self, now: float) -> bool:
        """A host whose last heartbeat is older than three heartbeats is silent."""
        return now - self.seen_at > SILENT_AFTER_HEARTBEATS * self.heartbeat
