"""Live progress for `fab` on a terminal, with rich: a bar per host while staging, a line while waiting."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from .records import RolloutRecord
from .rollout import HostStaging, RolloutResult
from .rollout import Progress as ProgressCallbacks


class RichProgress(ProgressCallbacks):
    """Per-host staging bars (bytes), a live acknowledgement line, a final summary table."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.bars = Progress(TextColumn("{task.description:<14}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=self.console, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.bars.stop()

    def stage_started(self, host: str, total_bytes: int) -> None:
        self.tasks[host] = self.bars.add_task(host, total=max(total_bytes, 1))

    def stage_advanced(self, host: str, sent_bytes: int) -> None:
        if host in self.tasks:
            self.bars.update(self.tasks[host], completed=sent_bytes)

    def stage_finished(self, host: str, result: HostStaging) -> None:
        if host in self.tasks:
            task = self.tasks[host]
            self.bars.update(task, completed=self.bars.tasks[task].total)
        elif result.already_staged:
            self.bars.console.print(f"{host:<14} already staged")

    def phase(self, text: str) -> None:
        self.bars.console.print(f"[bold]{text}[/bold]")

    def waiting(self, pending: list[str]) -> None:
        self.bars.console.print(f"waiting for {len(pending)} acknowledgement(s): {', '.join(pending)}")

    def summary(self, result: RolloutResult) -> None:
        table = Table(title=f"release {result.release}")
        for column in ("host", "staging", "files sent", "bytes sent", "files linked"):
            table.add_column(column)
        for host, st in sorted(result.staged.items()):
            table.add_row(host, "already staged" if st.already_staged else "staged", str(st.files_sent),
                          str(st.bytes_sent), str(st.files_linked))
        self.console.print(table)

    @staticmethod
    def status_table(status: dict[str, Any]) -> str:
        """`fab status` as a table; silent, lagging or degraded hosts in red, an unfinished rollout below."""
        table = Table()
        for column in ("host", "release", "label", "revision", "state", "last seen", "problem"):
            table.add_column(column)
        if status["rollout"]:
            table.caption = escape(RolloutRecord.from_json(json.dumps(status["rollout"])).to_text())
            table.caption_style = "bold red"
        for r in status["hosts"]:
            style = None if r["healthy"] else "bold red"
            table.add_row(r["host"], r["release"] or "-", r["label"] or "", str(r["revision"] or "-"),
                          r["state"] or "-", r["seen"] or "-", r["problem"], style=style)
        console = Console()
        with console.capture() as capture:
            console.print(table)
        return capture.get()
