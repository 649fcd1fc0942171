"""What the agent writes under `shared/` (data.json and the rendered runtime templates) and under `private/` (the
private data and the templates that may see it).

A template sees the public data only (`data`), and renders into shared/, which nginx serves under /_sync/. A
template named `*.private.j2` also sees the private data (`private`) and renders into private/ instead (mode
0640 in a 0750 folder of the agent's user and group), which nginx does not serve and its user cannot read
(docs/configuration.md, "Private data"). All are replaced by temp file and rename (fsutil.atomic_write), never fsynced:
Redis is the durable copy and the agent rewrites them from the snapshot at
every start. Templates render in a sandboxed Jinja2 environment with strict
undefined; a template that fails keeps its previous output and is reported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from ..fsutil import atomic_write, read_nofollow, write_temp
from ..protocol import MAX_DATA_BYTES, MAX_ID_LENGTH, load_json
from ..snapshot import Point

log = logging.getLogger(__name__)


def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        func = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    typed: Callable[[int, bytes, int, bytes, int], int] = func
    return typed


_RENAMEAT2 = _renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace a shared file as atomic_write does, but swap it in with renameat2(RENAME_EXCHANGE) and unlink
    the old content: a reader sees the old file or the new one, as with rename(2).

    Why not rename(2): on ext4 (auto_da_alloc) a rename over an existing file starts write-out of the new
    file right away, which made every data.json and template write cost 130-150 us of wall time (most of
    the agent's time per change, docs/performance.md). The exchange does not, and the old inode is freed
    before it is ever written back. The price is the one the design already pays: after a power loss the
    file can be empty until the agent rewrites it from the snapshot at start. Falls back to atomic_write
    when the file does not exist yet or the filesystem cannot exchange. Whatever stands at path is replaced, a
    symlink included, never followed (one to a folder the agent may not read made every write fail)."""
    if _RENAMEAT2 is None or not os.path.lexists(path):
        atomic_write(path, data, mode)
        return
    temp = write_temp(path, data, mode)
    try:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(temp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) != 0:
            code = ctypes.get_errno()
            if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP):
                raise OSError(code, f"renameat2({temp}, {path}): {os.strerror(code)}")
            os.replace(temp, path)  # no exchange here (or the file just went away): a plain rename
    finally:
        temp.unlink(missing_ok=True)  # after the exchange: the old content

CLIENT_FILE = "frontfleet.js"  # the live stream's browser client, served beside data.json as /_sync/frontfleet.js
CLIENT_SOURCE = Path(__file__).parent / "static" / CLIENT_FILE


def install_client(shared_dir: Path) -> None:
    """Put the browser client of the live stream into shared/, as the agent that serves the stream ships it (a
    page and its stream never come from two versions); left alone when it is there already."""
    body = CLIENT_SOURCE.read_bytes()
    target = shared_dir / CLIENT_FILE
    try:
        if target.read_bytes() == body:
            return
    except FileNotFoundError:
        pass
    replace_file(target, body)


DATA_FILE = "data.json"
PRIVATE_DATA_FILE = "data.json"  # in private/: every private key and value, for `sync-agent status --data` (recovery)
PRIVATE_MODE = 0o640  # the files of private/: the agent's user and group (a service that needs them joins the group)
PRIVATE_DIR_MODE = 0o750
PRIVATE_TEMPLATE_SUFFIX = ".private.j2"
APPLIED_FILE = "applied.json"  # the applied point (epoch, revision, change id) and the epochs left; not secret
# What a reader takes of each file at most: data.json is the data caps' keys and values plus JSON's quotes and
# commas (escapes can double a value's bytes); applied.json is a point and at most 16 epochs.
DATA_LIMIT = 2 * MAX_DATA_BYTES + 1024 * 1024
APPLIED_LIMIT = 64 * 1024
TEMPLATE_SUFFIX = ".j2"


@dataclass(frozen=True)
class ReleaseInfo:
    """The current release as templates see it: `release.id`, `release.label`."""

    id: str
    label: str


def _read_json(path: Path) -> Any:
    """A data file the agent wrote, None when there is none: never through a symlink, at most DATA_LIMIT bytes."""
    try:
        raw = read_nofollow(path, DATA_LIMIT)
    except FileNotFoundError:
        return None
    return load_json(raw)


def is_private_template(name: str) -> bool:
    return name.endswith(PRIVATE_TEMPLATE_SUFFIX)


class SharedFiles:
    """Writes shared/data.json and renders every `*.j2` of the templates directory into shared/, except the
    `*.private.j2`, which render into private/ and alone see the private data."""

    def __init__(self, shared_dir: Path, templates_dir: Path | None, host: str,
                 private_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
        self.private_dir = private_dir
        self.templates_dir = templates_dir
        self.host = host
        self._env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._compiled: dict[str, tuple[tuple[int, int], Template | None, str]] = {}
        self.errors: dict[str, str] = {}  # template name → why it failed to render last time
        self.write_errors: dict[str, str] = {}  # template name → why its output could not be written last time

    def ensure_dir(self) -> None:
        """Create shared/ if it is missing, 0755 whatever the umask (the unit's is 0077): nginx reads it."""
        try:
            self.shared_dir.mkdir(mode=0o755, parents=True)
        except FileExistsError:
            return
        os.chmod(self.shared_dir, 0o755)

    def ensure_private_dir(self) -> None:
        """Create private/ if it is missing (an agent run by hand; `sync-agent layout` makes it for the unit), 0750
        whatever the umask; an existing one keeps the mode the layout gave it."""
        if self.private_dir is None:
            return
        try:
            self.private_dir.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            return
        except OSError as err:  # R itself is root's under the unit: the layout must make it
            log.warning("cannot create %s (%s): `sync-agent layout` makes it", self.private_dir, err)
            return
        os.chmod(self.private_dir, PRIVATE_DIR_MODE)

    def write_private(self, private: dict[str, Any]) -> None:
        """Replace private/data.json with every private key and value (0640): what `fab recover` reads back."""
        if self.private_dir is None:
            return
        body = json.dumps(private, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        replace_file(self.private_dir / PRIVATE_DATA_FILE, body, PRIVATE_MODE)

    def read_private(self) -> Any:
        """private/data.json as written, None when there is none (an agent from before private data). Read without
        following a symlink, as read_data."""
        return None if self.private_dir is None else _read_json(self.private_dir / PRIVATE_DATA_FILE)

    def write_data(self, data: dict[str, Any]) -> None:
        """Replace data.json with the whole data set, keys sorted so equal data gives equal bytes."""
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        replace_file(self.shared_dir / DATA_FILE, body)

    def write_applied(self, point: Point, left: list[str]) -> None:
        """Keep what this host applied (and acknowledged) across restarts, beside data.json."""
        body = json.dumps({**point.to_json(), "left": left}, separators=(",", ":")).encode()
        replace_file(self.shared_dir / APPLIED_FILE, body)

    def read_data(self) -> Any:
        """data.json as written, None when there is none. Read without following a symlink: root reads it too
        (`sync-agent status --data`, for `fab recover`), and the agent's user could plant one there."""
        return _read_json(self.shared_dir / DATA_FILE)

    def read_applied(self) -> tuple[Point | None, list[str]]:
        """What write_applied kept: (None, []) when there is nothing (a new host, or one from before the chain);
        ValueError when the file cannot be read as one."""
        try:
            raw = read_nofollow(self.shared_dir / APPLIED_FILE, APPLIED_LIMIT)
        except FileNotFoundError:
            return None, []
        body = load_json(raw)
        left = body.get("left", []) if isinstance(body, dict) else None
        if not isinstance(left, list) or not all(isinstance(e, str) and 0 < len(e) <= MAX_ID_LENGTH for e in left):
            raise ValueError("its \"left\" is not a list of epochs")
        return Point.from_json(body), left

    def templates_changed(self) -> bool:
        """True when a template was added, removed or edited since the last render (checked on reconcile)."""
        if self.templates_dir is None:
            return False
        try:
            seen = {entry.name: (entry.stat().st_mtime_ns, entry.stat().st_size)
                    for entry in os.scandir(self.templates_dir)
                    if entry.name.endswith(TEMPLATE_SUFFIX) and not entry.name.startswith(".")}
        except OSError:
            return False
        return seen != {name: cached[0] for name, cached in self._compiled.items()}

    def _templates(self) -> dict[str, tuple[Template | None, str]]:
        """The templates on disk, compiled again only when a file's mtime or size changed."""
        if self.templates_dir is None:
            return {}
        found: dict[str, tuple[Template | None, str]] = {}
        try:
            entries = list(os.scandir(self.templates_dir))
        except FileNotFoundError:
            entries = []
        except OSError as err:
            log.error("cannot list the templates directory %s: %s", self.templates_dir, err)
            return {}
        for entry in entries:
            name = entry.name
            if not name.endswith(TEMPLATE_SUFFIX) or name.startswith(".") or name == TEMPLATE_SUFFIX:
                continue
            try:
                stat = entry.stat()
            except OSError:
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            cached = self._compiled.get(name)
            if cached is None or cached[0] != signature:
                try:
                    source = Path(entry.path).read_text()
                    compiled: Template | None = self._env.from_string(source)
                    problem = ""
                except (OSError, UnicodeDecodeError, TemplateError) as err:
                    compiled, problem = None, f"cannot load: {err}"
                cached = (signature, compiled, problem)
                self._compiled[name] = cached
            found[name] = (cached[1], cached[2])
        for name in set(self._compiled) - set(found):
            del self._compiled[name]
        return found

    def render(self, data: dict[str, Any], release: ReleaseInfo | None, revision: int,
               private: dict[str, Any] | None = None) -> dict[str, str]:
        """Render every template atomically; a failing one keeps its last output. Returns the render failures;
        outputs the filesystem refused to take are in write_errors (a write to retry, not a template's fault).

        A public template's context has no `private` at all (strict undefined: using it fails the template, it
        never renders as empty); a `*.private.j2` gets it and writes into private/."""
        context = {
            "data": data,
            "release": {"id": release.id, "label": release.label} if release else {"id": "", "label": ""},
            "host": self.host,
            "revision": revision,
        }
        private_context = {**context, "private": private or {}}
        errors: dict[str, str] = {}
        write_errors: dict[str, str] = {}
        for name, (template, problem) in sorted(self._templates().items()):
            secret = is_private_template(name)
            if secret and self.private_dir is None:
                continue
            folder = self.private_dir if secret and self.private_dir is not None else self.shared_dir
            target = name[: -len(PRIVATE_TEMPLATE_SUFFIX if secret else TEMPLATE_SUFFIX)]
            if template is None:
                errors[name] = problem
            elif secret and target == PRIVATE_DATA_FILE:
                errors[name] = (f"it would overwrite private/{PRIVATE_DATA_FILE}, where the agent keeps the private "
                                "data; rename it")
            else:
                try:
                    output = template.render(private_context if secret else context).encode()
                except Exception as err:  # a template can raise anything; none may stop the agent
                    # A private template's error text could quote a private value: only an undefined name's is kept.
                    shown = not secret or isinstance(err, UndefinedError)
                    errors[name] = type(err).__name__ + (f": {err}" if shown else "")
                else:
                    try:
                        replace_file(folder / target, output, PRIVATE_MODE if secret else 0o644)
                    except OSError as err:
                        write_errors[name] = f"cannot write {folder / target}: {err}"
                    continue
            if self.errors.get(name) != errors[name]:
                log.error("template %s failed, %s keeps its previous output: %s", name, target, errors[name])
        for name in set(self.errors) - set(errors):
            log.info("template %s renders again", name)
        self.errors = errors
        self.write_errors = write_errors
        return errors

    def error_summary(self) -> str:
        if not self.errors:
            return ""
        name, why = sorted(self.errors.items())[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"template {name} failed: {why}{more}"
