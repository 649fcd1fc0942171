"""The fleet as read from an inventory, cached, so that a `fab` call whose inventory did not change starts without
importing Ansible (its loader and templating are most of what `fab status` costs before it does anything).

The cache holds only what `load_fleet` returns (addresses, ports, users, key paths, ssh_config lines, the
frontfleet_* settings) and is keyed by the content of everything that reading depends on: every file of the
inventory, the frontfleet role's defaults, the ansible.cfg Ansible finds, every ANSIBLE_* variable, frontfleet's
version. Nothing is cached for an inventory that holds vault-encrypted data (the decrypted values must never
reach a file) or that Ansible computes when it reads it (an executable script, an inventory plugin's config).
The files are the user's own: a 0700 folder under $XDG_CACHE_HOME (~/.cache), each file 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..fsutil import atomic_write, private_dir, user_cache_dir
from .inventory import DEFAULTS_FILE, Fleet, Host, ansible_config_file, default_inventory, load_fleet

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_COMPUTED = re.compile(rb"^plugin\s*:", re.MULTILINE)  # an inventory plugin's config: Ansible asks the plugin
_VAULT = (b"$ANSIBLE_VAULT", b"!vault")
_NOT_INVENTORY = {"credentials"}  # frontfleet's generated passwords live beside the inventory; Ansible skips them


def cache_dir() -> Path:
    return user_cache_dir("fleets")


def cached_fleet(source: str | None = None) -> Fleet:
    """load_fleet(source), from the cache when nothing it depends on changed since the last read."""
    source = str(Path(source or default_inventory()).resolve())
    key = signature(source)
    path = cache_dir() / f"{hashlib.sha256(source.encode()).hexdigest()[:32]}.json"
    if key is not None:
        fleet = _read(path, key)
        if fleet is not None:
            return fleet
    fleet = load_fleet(source)
    if key is not None:
        _write(path, key, fleet)
    else:
        path.unlink(missing_ok=True)
    return fleet


def signature(source: str) -> str | None:
    """A digest of everything reading the fleet depends on; None when the inventory must not be cached."""
    digest = hashlib.sha256(f"{CACHE_FORMAT} {__version__} {source}\n".encode())
    for path in (*_inventory_files(Path(source)), DEFAULTS_FILE, ansible_config_file()):
        if path is None:
            continue
        try:
            data = path.read_bytes()
            executable = path.stat().st_mode & 0o111 and path.is_relative_to(source)
        except OSError:
            return None
        if executable or any(marker in data for marker in _VAULT) or _COMPUTED.search(data):
            return None
        digest.update(f"{path}\0{len(data)}\0".encode() + data)
    for name in sorted(os.environ):
        if name.startswith("ANSIBLE_"):
            digest.update(f"{name}={os.environ[name]}\0".encode())
    return digest.hexdigest()


def _inventory_files(source: Path) -> list[Path]:
    if source.is_file():
        folders = [source.parent / "group_vars", source.parent / "host_vars"]
        return [source, *(p for folder in folders for p in sorted(folder.rglob("*")) if p.is_file())]
    return [p for p in sorted(source.rglob("*")) if p.is_file() and _NOT_INVENTORY.isdisjoint(
        p.relative_to(source).parts[:1])]


def _read(path: Path, key: str) -> Fleet | None:
    try:
        body = json.loads(path.read_bytes())
        if body.get("signature") != key:
            return None
        fleet = body["fleet"]
        return Fleet(source=fleet["source"], web=tuple(_host(h) for h in fleet["web"]), redis=_host(fleet["redis"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        if not isinstance(err, FileNotFoundError):
            log.debug("ignoring the fleet cache %s: %s", path, err)
        return None


def _host(raw: dict[str, Any]) -> Host:
    return Host(**{**raw, "ssh_args_config": tuple(raw["ssh_args_config"]), "ssh_config": tuple(raw["ssh_config"])})


def _write(path: Path, key: str, fleet: Fleet) -> None:
    try:
        private_dir(path.parent)
        atomic_write(path, json.dumps({"signature": key, "fleet": asdict(fleet)}).encode(), mode=0o600)
    except OSError as err:  # a read-only home is slower, not wrong
        log.debug("cannot write the fleet cache %s: %s", path, err)
