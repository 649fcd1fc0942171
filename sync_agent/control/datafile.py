"""Shared data to and from a file: `fab data-export` writes every key and value; `fab data-import` makes the store
hold what a file holds. Values are exact JSON (agents re-serialize them, so an export imported again gives
byte-identical data.json on every host). docs/reliability.md says when to use them.

An import is checked whole before anything is written (the format, every key and value as `data set` checks
them, the data set's caps after the import). Onto a live store it is written one change per key that differs, in
key order: agents apply it like any other changes. Onto an empty store it is one step: a new epoch holding the
file's data whose origin continues from the point the file was exported at, which agents follow only if that is
what they applied (else `fab recover` is the way). An import carries data only, never the release.

Private keys are exported only when asked (`--private`: the file then holds secrets, written 0600 with --file),
in a "private" object of their own. An import changes private keys only when its file has that object: a file
exported without it leaves the store's private keys as they are, even with --replace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolError, UsageError
from ..protocol import (
    MAX_DATA_BYTES,
    MAX_DATA_KEYS,
    MAX_PRIVATE_BYTES,
    MAX_PRIVATE_KEYS,
    compact_json,
    validate_data_key,
    validate_json_value,
)
from ..snapshot import Point
from .store import Store

FORMAT = "frontfleet-data/1"


@dataclass
class ImportResult:
    """What an import changed; revision is the last change's (0: nothing changed)."""

    set: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    private_set: list[str] = field(default_factory=list)  # names only: an import's report shows no private value
    private_deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    revision: int = 0
    new_epoch: bool = False  # the store was empty: the import made its epoch


def export_document(store: Store, private: bool = False) -> dict[str, Any]:
    """Every key and value, with the namespace and the point in the store's history they were read at; with
    private, the private keys and values too (else only how many were left out)."""
    snapshot = store.snapshot()
    document = {"format": FORMAT, "namespace": store.keys.namespace, "epoch": snapshot.epoch,
                "revision": snapshot.revision, "id": snapshot.head[1] if snapshot.head else None,
                "data": dict(sorted(snapshot.data.items())),
                "skipped": list(snapshot.bad_keys)}  # stored values agents refuse: not exported
    if private:
        document["private"] = dict(sorted(snapshot.private.items()))
    else:
        document["private_left_out"] = len(snapshot.private)
    return document


@dataclass(frozen=True)
class Document:
    """An export file, checked: its values as compact JSON, and the point it was exported at."""

    values: dict[str, str]
    exported_at: Point | None
    private: dict[str, str] | None = None  # None: the file has no private keys (exported without --private)


def checked_values(data: dict[str, Any], source: str, private: bool = False) -> dict[str, str]:
    """Every key and value checked as `data set` checks them, as compact JSON; UsageError names the first bad one
    (a private one by its key alone: the error never quotes a private value)."""
    values: dict[str, str] = {}
    for key, value in data.items():
        try:
            values[validate_data_key(key)] = validate_json_value(json.dumps(value, ensure_ascii=False))
        except ProtocolError as err:
            why = "its value cannot be served (too large, too deep, or not finite)" if private else str(err)
            raise UsageError(f"{source}: {'private ' if private else ''}key {key!r}: {why}; nothing was "
                             "changed") from err
    _check_caps(values, source, private)
    return values


def check_apart(data: Any, private: Any, source: str) -> None:
    """A key is public or private, never both (as lua/data.lua keeps it)."""
    both = sorted(set(data or ()) & set(private or ()))
    if both:
        raise UsageError(f"{source}: {', '.join(both)} would be both public and private; a key is one or the other. "
                         "Nothing was changed")


def _check_caps(after: dict[str, str], source: str, private: bool = False) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in after.items())
    max_keys, max_bytes = (MAX_PRIVATE_KEYS, MAX_PRIVATE_BYTES) if private else (MAX_DATA_KEYS, MAX_DATA_BYTES)
    if len(after) > max_keys or size > max_bytes:
        kind = "private set" if private else "data set"
        raise UsageError(f"with {source} the {kind} would hold {len(after)} keys and {size} bytes; the limits are "
                         f"{max_keys} keys and {max_bytes} bytes; nothing was changed")


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
    raw_private = body.get("private")
    if raw_private is not None and not isinstance(raw_private, dict):
        raise UsageError(f"{source}: \"private\" must be an object of keys and values")
    check_apart(body["data"], raw_private, source)
    private = checked_values(raw_private, source, private=True) if raw_private is not None else None
    return Document(checked_values(body["data"], source), exported_at, private)


def _check_moves(store: Store, document: Document, current: dict[str, str], replace: bool) -> None:
    """Refuse, before any write, a key the file puts on the other side (public/private) of where the store has it,
    unless the import deletes it there first (--replace, with the file holding that side)."""
    stored_private = set(store.private_keys())
    for key in sorted(document.values):
        if key in stored_private and not (replace and document.private is not None and key not in document.private):
            raise UsageError(f"{key} is a private key in the store and a public one in the file; nothing was changed. "
                             f"Delete it first (data del --private {key}), or import a file exported with --private "
                             "using --replace")
    for key in sorted(document.private or ()):
        if key in current and not (replace and key not in document.values):
            raise UsageError(f"{key} is a public key in the store and a private one in the file; nothing was changed. "
                             f"Delete it first (data del {key}), or import with --replace")


def import_values(store: Store, document: Document, replace: bool = False) -> ImportResult:
    """Make the store hold the document's values (with replace: and no other key), one change per key that
    differs; onto an empty store, one new epoch that continues from the point the file was exported at. Private
    keys are changed only when the document has them."""
    values = document.values
    if not store.has_epoch():
        change = store.seed("import", document.exported_at, values, private=document.private)
        return ImportResult(set=sorted(values), private_set=sorted(document.private or {}),
                            revision=change.revision, new_epoch=True)
    current = {key: compact_json(value) for key, value in store.data_list().items()}
    _check_caps(dict(values) if replace else {**current, **values}, "the import")
    secrets: dict[str, str] = {}
    if document.private is not None:
        secrets = {key: compact_json(value) for key, value in store.private_list().items()}
        _check_caps(dict(document.private) if replace else {**secrets, **document.private}, "the import", True)
    _check_moves(store, document, current, replace)
    result = ImportResult()
    # Deletions first: a key that moves between public and private is deleted on one side before it is set on the
    # other (lua/data.lua refuses a key on both).
    for key in sorted(set(current) - set(values)) if replace else ():
        result.revision = store.data_del(key).revision or result.revision
        result.deleted.append(key)
    if document.private is not None:
        for key in sorted(set(secrets) - set(document.private)) if replace else ():
            result.revision = store.data_del(key, private=True).revision or result.revision
            result.private_deleted.append(key)
        for key in sorted(document.private):
            if secrets.get(key) == document.private[key]:
                result.unchanged += 1
                continue
            result.revision = store.data_set(key, document.private[key], private=True).revision
            result.private_set.append(key)
    for key in sorted(values):
        if current.get(key) == values[key]:
            result.unchanged += 1
            continue
        result.revision = store.data_set(key, values[key]).revision
        result.set.append(key)
    return result
