"""What a command prints, for every front end (`fab` tasks, `sync-agent` subcommands on either side): the data for
`--json`, the text for people, a warning and a failure for stderr, and the exit code. A handler returns one; the
front end prints it with `emit` and exits with its code, so no command builds its output twice."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from .errors import EXIT_OK, FrontfleetError, error_json


@dataclass(frozen=True)
class Report:
    """An operation's outcome as printed: `data` with --json, else `text`; `warning` and `failure` go to stderr,
    and a failure comes with a non-zero exit code."""

    data: Any
    text: str
    exit_code: int = EXIT_OK
    warning: str = ""
    failure: str = ""

    def render(self, as_json: bool) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True, default=str) if as_json else self.text

    def emit(self, as_json: bool) -> None:
        """Print the warning to stderr and the output to stdout; the front end reports the failure its own way."""
        if self.warning:
            print(self.warning, file=sys.stderr)
        out = self.render(as_json)
        if out:
            print(out, flush=True)


def error_report(err: FrontfleetError) -> Report:
    """A failed operation: the message for stderr, per-host causes in the JSON, the error's exit code."""
    return Report(error_json(err), "", err.exit_code, failure=str(err))
