"""Delivery of span batches: the one retry layer for the collector hop, and its accounting.

The sink's exporters never retry; this does. A batch is re-sent with exponential backoff and
jitter (honouring a server's retry hint) until the collector accepts it: forever in the sidecar,
until a deadline in the one-shot job. Backoff waits on the shutdown event, so SIGTERM is not held
up by a down collector. A batch the collector refuses for good (HTTP 400, gRPC INVALID_ARGUMENT)
is written to the dead-letter file as OTLP JSON, counted and logged; spans refused inside an
OTLP ``partial_success`` are counted and logged (the protocol does not say which ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from .errors import ExporterError
from .sink import Delivery, deliver, spans_to_otlp_json
from .telemetry import DeadLetter, Metrics

__all__ = ["ExportSummary", "RateLimitedLog", "Shipper", "Stopped", "UndeliveredError"]

_logger = logging.getLogger(__name__)

_LOG_EVERY: Final = 60.0  # seconds between repeats of the same failure log
MAX_NAMED_FAILURES: Final = 100


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """Shutdown was requested while a batch was still undelivered."""


class UndeliveredError(ExporterError):
    """The collector did not accept a batch before the one-shot deadline.

    Args:
        trace_ids: the provider trace ids (or step ids) in the batch.
        reason: the last failure.
    """

    def __init__(self, trace_ids: Sequence[str], reason: str) -> None:
        shown = ", ".join(trace_ids[:5]) + (" ..." if len(trace_ids) > 5 else "")
        super().__init__(f"{len(trace_ids)} traces not delivered ({reason}): {shown}")
        self.trace_ids = list(trace_ids)
        self.reason = reason


@dataclass(slots=True)
class ExportSummary:
    """What a pass (or a whole one-shot export) did; printed by the CLI."""

    discovered: int = 0
    exported: int = 0
    run_spans: int = 0
    missing: int = 0
    pending: int = 0
    invalid: int = 0
    rejected: int = 0
    undelivered: int = 0
    skipped_shard: int = 0
    #: The first failures, by name (the dead-letter file has them all; memory stays bounded).
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        """Name a failure in the summary (the first ``MAX_NAMED_FAILURES`` are kept)."""
        if len(self.failures) < MAX_NAMED_FAILURES:
            self.failures.append(text)

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.rejected or self.undelivered)

    def add(self, other: ExportSummary) -> None:
        for name in (
            "discovered",
            "exported",
            "run_spans",
            "missing",
            "invalid",
            "rejected",
            "undelivered",
            "skipped_shard",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.pending = other.pending
        for text in other.failures:
            self.fail(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "discovered": self.discovered,
            "exported": self.exported,
            "run_spans": self.run_spans,
            "missing_traces": self.missing,
            "pending_traces": self.pending,
            "invalid": self.invalid,
            "rejected": self.rejected,
            "undelivered": self.undelivered,
            "skipped_other_shards": self.skipped_shard,
            "failures": self.failures,
            "ok": self.ok,
        }


class RateLimitedLog:
    """Logs a repeated failure once a minute at WARNING, and at DEBUG in between."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._last: dict[str, float] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = self._clock()
        if now - self._last.get(key, -_LOG_EVERY) >= _LOG_EVERY:
            self._last[key] = now
            self._logger.warning(message, *args)
        else:
            self._logger.debug(message, *args)


class Shipper:
    """Sends batches through an exporter until accepted, and books the outcome.

    Args:
        exporter: any SpanExporter (ours report partial_success and permanent failures).
        metrics: counters to update.
        dead_letter: where refused batches go.
        stop: shutdown event; backoff waits on it.
        deadline_seconds: None to retry forever (sidecar), else give up after this long.
        retry_initial_seconds: first backoff.
        retry_max_seconds: longest backoff.
        dry_run: convert but send nothing.
        on_wait: called on every retry (the worker's heartbeat).
    """

    def __init__(
        self,
        *,
        exporter: SpanExporter,
        metrics: Metrics,
        dead_letter: DeadLetter,
        stop: asyncio.Event,
        deadline_seconds: float | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 30.0,
        dry_run: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self._exporter = exporter
        self._metrics = metrics
        self.dead_letter = dead_letter
        self._stop = stop
        self._deadline = deadline_seconds
        self._initial = retry_initial_seconds
        self._max = retry_max_seconds
        self._dry_run = dry_run
        self._on_wait = on_wait
        self._log = RateLimitedLog(_logger)

    async def ship(
        self,
        spans: Sequence[ReadableSpan],
        ids: Sequence[str],
        summary: ExportSummary,
        *,
        kind: str = "trace",
    ) -> bool:
        """Deliver ``spans`` and count them in ``summary``; True if the collector took them.

        ``ids`` name the records in the batch for error messages and the dead-letter file. A
        batch refused for good is dead-lettered and False is returned: the caller may move on,
        the records are reported, not lost.

        Raises:
            Stopped: shutdown was requested before the batch was accepted.
            UndeliveredError: the deadline passed before the batch was accepted.
        """
        if not spans:
            return True
        delivery = await self._send(spans, ids)
        sent = len(spans)
        if delivery.permanent:
            summary.undelivered += sent
            self._metrics.traces_failed.labels(reason="refused").inc(sent)
            summary.fail(f"collector refused {sent} spans for good: {delivery.message}")
            self.dead_letter.write(
                "refused",
                message=delivery.message,
                ids=list(ids),
                otlp_json=spans_to_otlp_json(spans),
            )
            _logger.error(
                "collector refused a batch of %d spans for good (%s); it is in the dead-letter "
                "file %s",
                sent,
                delivery.message,
                self.dead_letter.path,
            )
            return False
        if delivery.rejected:
            summary.rejected += delivery.rejected
            self._metrics.spans_rejected.inc(delivery.rejected)
            self._metrics.traces_failed.labels(reason="rejected").inc(delivery.rejected)
            summary.fail(
                f"collector rejected {delivery.rejected} of {sent} spans: {delivery.message}"
            )
            _logger.error(
                "collector accepted the batch but rejected %d of %d spans: %s",
                delivery.rejected,
                sent,
                delivery.message or "(no message)",
            )
        if kind == "run":
            summary.run_spans += sent
            self._metrics.run_spans_exported.inc(sent)
        else:
            summary.exported += sent
            self._metrics.traces_exported.inc(sent)
        self._metrics.last_success.set(time.time())
        return True

    async def _send(self, spans: Sequence[ReadableSpan], ids: Sequence[str]) -> Delivery:
        if self._dry_run:
            return Delivery(delivered=True)
        started = time.monotonic()
        backoff = self._initial
        while True:
            delivery = await asyncio.to_thread(deliver, self._exporter, spans)
            if delivery.delivered or delivery.permanent:
                return delivery
            self._metrics.export_failures.inc()
            elapsed = time.monotonic() - started
            if self._deadline is not None and elapsed >= self._deadline:
                raise UndeliveredError(list(ids), delivery.message or "export failed")
            wait = min(backoff, self._max)
            if delivery.retry_after is not None:
                wait = max(wait, min(delivery.retry_after, self._max * 4))
            wait = random.uniform(wait / 2, wait)
            if self._deadline is not None:
                wait = min(wait, max(0.0, self._deadline - elapsed))
            self._log.warning(
                "export",
                "export of %d spans failed (%s); retrying in %.1fs, the checkpoint waits",
                len(spans),
                delivery.message or "no detail",
                wait,
            )
            self._metrics.retries.labels(hop="collector").inc()
            if self._on_wait is not None:
                self._on_wait()
            await wait_or_stop(self._stop, wait)
            if self._stop.is_set():
                raise Stopped
            backoff *= 2


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
