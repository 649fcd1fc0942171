"""The full desired state, read from Redis keys in one transaction.

Pub/Sub is the fast path, never the only one: agents read this snapshot on
every (re)connect, on a revision gap or a new epoch, and on a timer. The
same commands serve the sync control plane and the asyncio agent, so the
reading is written once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ProtocolError
from .protocol import Desired, Keys, validate_data_key

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """The part of a redis-py pipeline (sync or asyncio) the snapshot needs."""

    def get(self, name: str) -> Any: ...
    def hgetall(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Snapshot:
    """Epoch, revision, shared data and desired release at one instant."""

    epoch: str | None
    revision: int
    data: dict[str, Any] = field(default_factory=dict)
    desired: Desired = field(default_factory=Desired)
    bad_keys: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the store has no epoch: Redis lost its data, or nothing was ever published."""
        return self.epoch is None


def queue_snapshot(pipe: Pipeline, keys: Keys) -> None:
    """Queue the snapshot's reads on a transactional pipeline (MULTI/EXEC)."""
    pipe.get(keys.epoch)
    pipe.get(keys.revision)
    pipe.hgetall(keys.data)
    pipe.hgetall(keys.desired)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def parse_snapshot(results: list[Any]) -> Snapshot:
    """Build a Snapshot from the results of queue_snapshot; skip (and name) values that fail validation."""
    epoch, revision, raw_data, raw_desired = results[:4]
    data: dict[str, Any] = {}
    bad: list[str] = []
    for raw_key, raw_value in raw_data.items():
        key = _text(raw_key) or ""
        try:
            validate_data_key(key)
            data[key] = json.loads(_text(raw_value) or "null")
        except (ProtocolError, json.JSONDecodeError) as err:
            log.warning("skipping data key %r from the snapshot: %s", key, err)
            bad.append(key)
    desired_hash = {_text(k) or "": _text(v) or "" for k, v in raw_desired.items()}
    try:
        desired = Desired.from_hash(desired_hash)
    except ProtocolError as err:
        log.warning("skipping the desired release from the snapshot: %s", err)
        desired = Desired()
        bad.append("desired")
    return Snapshot(
        epoch=_text(epoch),
        revision=int(_text(revision) or 0),
        data=data,
        desired=desired,
        bad_keys=tuple(bad),
    )
