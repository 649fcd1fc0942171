"""Shared data to and from a file: `fab data-export` writes every key and value; `fab data-import` makes the store
hold what a file holds. Values are exact JSON (agents re-serialize them, so an export imported again gives
byte-identical data.json on every host). docs/reliability.md says when to use them.

An import is checked whole before anything is written (the format, every key and value as `data set` checks
them, the data set's caps after the import). Onto a live store it is written one change per key that differs, in
key order: agents apply it like any other changes. Onto an empty store it is one step: a new epoch holding the
file's data whose origin continues from the point the file was exported at, which agents follow only if that is
what they applied (else `fab recover` is the way). An import carries data only, never the release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolError, UsageError
from ..protocol import MAX_DATA_BYTES, MAX_DATA_KEYS, compact_json, validate_data_key, validate_json_value
from ..snapshot import Point
from .store import Store

FORMAT = "frontfleet-data/1"


@dataclass
class ImportResult:
    """What an import changed; revision is the last change's (0: nothing changed)."""

    set: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    revision: int = 0
    new_epoch: bool = False  # the store was empty: the import made its epoch


def export_document(store: Store) -> dict[str, Any]:
    """Every key and value, with the namespace and the point in the store's history they were read at."""
    snapshot = store.snapshot()
    return {"format": FORMAT, "namespace": store.keys.namespace, "epoch": snapshot.epoch,
            "revision": snapshot.revision, "id": snapshot.head[1] if snapshot.head else None,
            "data": dict(sorted(snapshot.data.items())),
            "skipped": list(snapshot.bad_keys)}  # stored values agents refuse: not exported


@dataclass(frozen=True)
class Document:
    """An export file, checked: its values as compact JSON, and the point it was exported at."""

    values: dict[str, str]
    exported_at: Point | None


def checked_values(data: dict[str, Any], source: str) -> dict[str, str]:
    """Every key and value checked as `data set` checks them, as compact JSON; UsageError names the first bad one."""
    values: dict[str, str] = {}
    for key, value in data.items():
        try:
            values[validate_data_key(key)] = validate_json_value(json.dumps(value, ensure_ascii=False))
        except ProtocolError as err:
            raise UsageError(f"{source}: key {key!r}: {err}; nothing was changed") from err
    _check_caps(values, source)
    return values


def _check_caps(after: dict[str, str], source: str) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in after.items())
    if len(after) > MAX_DATA_KEYS or size > MAX_DATA_BYTES:
        raise UsageError(f"with {source} the data set would hold {len(after)} keys and {size} bytes; the limits are "
                         f"{MAX_DATA_KEYS} keys and {MAX_DATA_BYTES} bytes; nothing was changed")


def parse_document(text: str, source: str) -> Document:
    """An export file, every key and value checked; UsageError says what is wrong."""
    try:
        body = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{source} is not JSON ({err}); it must be what `fab data-export` wrote") from err
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("data"), dict):
        raise UsageError(f"{source} is not a frontfleet data export (format {FORMAT!r} with a \"data\" object)")
    try:
        exported_at = Point.from_json(body) if body.get("epoch") is not None else None
    except ValueError as err:
        raise UsageError(f"{source}: the point it was exported at cannot be read ({err})") from err
    return Document(checked_values(body["data"], source), exported_at)


def import_values(store: Store, document: Document, replace: bool = False) -> ImportResult:
    """Make the store hold the document's values (with replace: and no other key), one change per key that
    differs; onto an empty store, one new epoch that continues from the point the file was exported at."""
    values = document.values
    if not store.has_epoch():
        change = store.seed("import", document.exported_at, values)
        return ImportResult(set=sorted(values), revision=change.revision, new_epoch=True)
    current = {key: compact_json(value) for key, value in store.data_list().items()}
    _check_caps(dict(values) if replace else {**current, **values}, "the import")
    result = ImportResult()
    for key in sorted(values):
        if current.get(key) == values[key]:
            result.unchanged += 1
            continue
        result.revision = store.data_set(key, values[key]).revision
        result.set.append(key)
    for key in sorted(set(current) - set(values)) if replace else ():
        result.revision = store.data_del(key).revision or result.revision
        result.deleted.append(key)
    return result
