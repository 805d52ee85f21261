"""The socket sidecar's parts: the socket worker's bookkeeping after each delivery, its metrics,
and the workers it runs side by side.

``run --socket`` runs up to two :class:`~exporter.worker.Worker`\\ s in one process, each on its
own checkpoint stream:

* the **socket worker** follows the :class:`~exporter.source.SocketSource` (wrapped in an
  :class:`~exporter.source.EnrichingSource` when the Letta API is configured). As soon as the
  collector accepts a batch, :class:`SocketDelivered` adds its provider trace ids (steps, runs)
  to the :class:`~exporter.delivered.DeliveredTraces` ledger and observes each span's delay from
  the record's timestamp to the acceptance; once the batch's checkpoint is saved, it trims the
  journal to the saved position;
* the **API worker** (with an API only) polls the API at a longer interval to reconcile what the
  socket missed, through :class:`~exporter.delivered.SkipDelivered`, so nothing the socket
  delivered is sent again, and leaves the parent spans of the socket's runs to the socket worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .batch import Batch, Kind
from .checkpoint import StreamState
from .delivered import DeliveredTraces
from .errors import ExporterError
from .source import SocketSource, SocketStats
from .telemetry import Metrics
from .worker import Worker

__all__ = ["MetricSocketStats", "SocketDelivered", "SocketSidecar", "WorkerTask"]

_logger = logging.getLogger(__name__)


class MetricSocketStats(SocketStats):
    """The socket source's counts, forwarded to Prometheus as they happen (from the reception
    thread: the client's counters are thread-safe)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def on_received(self, size: int) -> None:
        super().on_received(size)
        self._metrics.socket_received.inc()
        self._metrics.socket_received_bytes.inc(size)

    def on_refused(self, size: int) -> None:
        super().on_refused(size)
        self._metrics.socket_refused.inc()

    def on_invalid(self, reason: str) -> None:
        super().on_invalid(reason)
        self._metrics.socket_invalid.labels(reason=reason).inc()


def watch_journal(socket: SocketSource, metrics: Metrics) -> None:
    """Journal depth gauges, read at each scrape (0 until the journal is open)."""

    def depth(records: bool) -> float:
        try:
            journal = socket.journal
        except RuntimeError:
            return 0.0
        return float(journal.depth_records if records else journal.depth_bytes)

    metrics.journal_depth_records.set_function(lambda: depth(True))
    metrics.journal_depth_bytes.set_function(lambda: depth(False))


class SocketDelivered:
    """What follows a socket batch's delivery, once its checkpoint is saved (the worker's
    ``after_delivery``): ledger, journal trim, delay histogram.

    Args:
        socket: the source whose journal is trimmed.
        delivered: the ledger the API worker consults (None: no API worker).
        metrics: for the delay histogram.
        clock: Unix seconds.
    """

    def __init__(
        self,
        socket: SocketSource,
        delivered: DeliveredTraces | None,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._socket = socket
        self._delivered = delivered
        self._metrics = metrics
        self._clock = clock

    async def accepted(self, batch: Batch) -> None:
        """The collector took the batch (the worker's ``on_accepted``): remember its traces
        before anything else can ask (the API poll), and observe each span's delay."""
        now = self._clock()
        traces: list[str] = []
        runs: list[str] = []
        steps: list[str] = []
        for entry in batch.entries:
            if entry.kind is not Kind.SPAN or entry.span_index is None:
                continue
            steps.append(entry.step_id)
            if entry.trace_id:
                traces.append(entry.trace_id)
            if entry.run_id:
                runs.append(entry.run_id)
            # A span ends at its record's created_at (the socket record's timestamp).
            end = batch.spans[entry.span_index].end_time
            if end:
                self._metrics.socket_delivery_seconds.observe(max(0.0, now - end / 1e9))
        if self._delivered is not None and traces:
            await asyncio.to_thread(self._delivered.add, traces, runs, steps)

    async def __call__(self, batch: Batch, state: StreamState) -> None:
        """The batch's checkpoint is saved (the worker's ``after_delivery``): trim the journal."""
        if state.cursor is not None:
            await self._socket.acknowledge(state.cursor)


@dataclass(frozen=True, slots=True)
class WorkerTask:
    """A worker and the wait between its reads after a failure."""

    worker: Worker
    poll_seconds: float
    name: str


@dataclass(slots=True)
class SocketSidecar:
    """The socket source and the workers that run beside it (see the module docstring)."""

    socket: SocketSource
    workers: list[WorkerTask] = field(default_factory=list)

    def ready(self) -> bool:
        """/readyz: the listener is up (Letta's records are being received)."""
        return self.socket.listening

    async def start(self) -> None:
        """Listen before anything else, so /readyz turns true as soon as records are taken."""
        await self.socket.start()

    async def drain(self) -> None:
        """Shutdown: refuse new connections, commit what was received; the socket worker then
        ships what the journal holds (if the collector takes it) and ends."""
        try:
            await self.socket.stop_listening()
        except (OSError, ExporterError) as exc:  # what the journal holds ships at the next start
            _logger.error("socket %s: cannot stop listening cleanly: %s", self.socket.path, exc)

    async def aclose(self) -> None:
        await self.socket.aclose()
