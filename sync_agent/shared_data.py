"""What the agent writes under `shared/`: data.json and the rendered runtime templates.

Both are replaced by temp file and rename (fsutil.atomic_write), never fsynced:
Redis is the durable copy and the agent rewrites them from the snapshot at
every start. Templates render in a sandboxed Jinja2 environment with strict
undefined; a template that fails keeps its previous output and is reported.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .fsutil import atomic_write

log = logging.getLogger(__name__)

DATA_FILE = "data.json"
TEMPLATE_SUFFIX = ".j2"


@dataclass(frozen=True)
class ReleaseInfo:
    """The current release as templates see it: `release.id`, `release.label`."""

    id: str
    label: str


class SharedFiles:
    """Writes shared/data.json and renders every `*.j2` of the templates directory into shared/."""

    def __init__(self, shared_dir: Path, templates_dir: Path | None, host: str) -> None:
        self.shared_dir = shared_dir
        self.templates_dir = templates_dir
        self.host = host
        self._env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._compiled: dict[str, tuple[tuple[int, int], Template | None, str]] = {}
        self.errors: dict[str, str] = {}  # template name → why it failed last time

    def ensure_dir(self) -> None:
        self.shared_dir.mkdir(parents=True, exist_ok=True)

    def write_data(self, data: dict[str, Any]) -> None:
        """Replace data.json with the whole data set, keys sorted so equal data gives equal bytes."""
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        atomic_write(self.shared_dir / DATA_FILE, body)

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

    def render(self, data: dict[str, Any], release: ReleaseInfo | None, revision: int) -> dict[str, str]:
        """Render every template atomically; a failing one keeps its last output. Returns the failures."""
        context = {
            "data": data,
            "release": {"id": release.id, "label": release.label} if release else {"id": "", "label": ""},
            "host": self.host,
            "revision": revision,
        }
        errors: dict[str, str] = {}
        for name, (template, problem) in sorted(self._templates().items()):
            target = name[: -len(TEMPLATE_SUFFIX)]
            if template is None:
                errors[name] = problem
            else:
                try:
                    atomic_write(self.shared_dir / target, template.render(context).encode())
                    continue
                except Exception as err:  # a template can raise anything; none may stop the agent
                    errors[name] = f"{type(err).__name__}: {err}"
            if self.errors.get(name) != errors[name]:
                log.error("template %s failed, %s keeps its previous output: %s", name, target, errors[name])
        for name in set(self.errors) - set(errors):
            log.info("template %s renders again", name)
        self.errors = errors
        return errors

    def error_summary(self) -> str:
        if not self.errors:
            return ""
        name, why = sorted(self.errors.items())[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"template {name} failed: {why}{more}"
