"""Folding each pass of a worker into its running totals and the pass gauges (pending traces,
open runs, the source's retries, the time of the last pass)."""

from __future__ import annotations

from .checkpoint import StreamState
from .source import Source
from .summary import ExportSummary
from .telemetry import Metrics

__all__ = ["PassCounts"]


class PassCounts:
    """The totals and gauges of a worker's passes.

    Args:
        source: read for its retry count (``stats.retries``, when it has one).
        state: the stream state (pending steps, open runs).
        metrics: the gauges.
        total: the worker's running totals.
    """

    def __init__(
        self, *, source: Source, state: StreamState, metrics: Metrics, total: ExportSummary
    ) -> None:
        self._source = source
        self._state = state
        self._metrics = metrics
        self._total = total
        self._source_retries = 0

    def count(self, summary: ExportSummary) -> None:
        """Fold a pass (finished or not) into the totals and the gauges."""
        self._count_source_retries()
        summary.pending = len(self._state.pending)
        self._metrics.pending_traces.set(len(self._state.pending))
        self._metrics.open_runs.set(len(self._state.open_runs))
        self._total.add(summary)

    def passed(self, now: float) -> None:
        """A pass got through: its time, and no lag."""
        self._metrics.last_pass.set(now)
        self._metrics.lag_seconds.set(0)

    def _count_source_retries(self) -> None:
        stats = getattr(self._source, "stats", None)
        retries = int(getattr(stats, "retries", 0))
        if retries > self._source_retries:
            self._metrics.retries.labels(hop="letta").inc(retries - self._source_retries)
            self._source_retries = retries
