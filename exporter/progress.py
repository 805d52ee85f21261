"""The progress bar of ``export`` on a terminal: done/total, rate and ETA, logs printed above it.

Counts come from the exporter's own metrics (updated at every delivery, run spans included), so
the bar never disagrees with the summary. Off unless stdout and stderr are terminals: a log
pipeline or a file gets the summary alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .shipping import ExportSummary
from .telemetry import Metrics

__all__ = ["ExportProgress", "count_records"]

_TRACES: Final = "letta_exporter_traces_exported_total"
_RUNS: Final = "letta_exporter_run_spans_exported_total"
_FAILURES: Final = "letta_exporter_export_failures_total"


class _Rate(ProgressColumn):
    """Traces per second over rich's sliding window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- traces/s" if speed is None else f"{speed:,.0f} traces/s", style="cyan")


def count_records(path: Path | str) -> int | None:
    """How many records a JSON lines file holds (its non-blank lines), for the bar's total;
    None when it cannot be known cheaply (stdin, one JSON document)."""
    if str(path) == "-":
        return None
    try:
        with Path(path).open("rb") as handle:
            first = handle.readline()
            while first and not first.strip():
                first = handle.readline()
            text = first.strip()
            if not (text.startswith(b"{") and text.endswith(b"}")):
                return None  # a pretty-printed document or an array
            count = 1
            for line in handle:
                if line.strip():
                    count += 1
            return count
    except OSError:
        return None


class ExportProgress:
    """A rich progress bar and rich's log handler, for the time of a ``with`` block.

    Args:
        enabled: show it (the CLI passes whether stdout and stderr are terminals).
        metrics: the export's metrics, read at each update.
        total: the traces to export when known (a file); None shows a count and a spinner.
        console: where to draw (stderr by default; tests pass a recording console).
    """

    def __init__(
        self,
        *,
        enabled: bool,
        metrics: Metrics,
        total: int | None = None,
        console: Console | None = None,
    ) -> None:
        self._enabled = enabled
        self._metrics = metrics
        self._total = total
        self._console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._handlers: list[logging.Handler] = []
        self._last = ExportSummary()

    def __enter__(self) -> ExportProgress:
        if not self._enabled:
            return self
        console = self._console or Console(stderr=True)
        columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
        if self._total is not None:
            columns += [BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn()]
        else:
            columns += [TextColumn("{task.completed} traces"), _Rate()]
        columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=console, transient=True)
        self._task = self._progress.add_task("exporting", total=self._total, status="")
        root = logging.getLogger()
        self._handlers = root.handlers[:]
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.handlers[:] = [handler]  # log lines print above the bar, never glued onto it
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self.update(self._last)  # the run spans shipped after the last batch count too
            self._progress.stop()
            logging.getLogger().handlers[:] = self._handlers
            self._progress = None

    def update(self, summary: ExportSummary) -> None:
        """Called after each delivered batch."""
        self._last = summary
        if self._progress is None:
            return
        failed = summary.invalid + summary.rejected + summary.undelivered
        runs = int(self._metrics.value(_RUNS))
        status = f"{runs} runs"
        if summary.missing:
            status += f" | {summary.missing} without trace"
        if failed:
            status += f" | {failed} failed"
        if self._metrics.value(_FAILURES):
            status += " | collector retries"
        self._progress.update(
            self._task, completed=int(self._metrics.value(_TRACES)) + failed, status=status
        )

    def render(self) -> None:
        """Draw now (tests; rich redraws ten times a second on its own)."""
        if self._progress is not None:
            self._progress.refresh()
