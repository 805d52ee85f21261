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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from ._ratelimit import RateLimitedLog
from ._retry import Jitter, backoff_delay
from .errors import Stopped, UndeliveredError
from .sink import Delivery, deliver, spans_to_otlp_json
from .telemetry import DeadLetter, Metrics

__all__ = ["ExportSummary", "Shipper", "Stopped", "UndeliveredError", "wait_or_stop"]

_logger = logging.getLogger(__name__)

MAX_NAMED_FAILURES: Final = 100
#: How many times the computed backoff cap a collector's Retry-After may ask for.
_RETRY_AFTER_FACTOR: Final = 4.0


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
        sleep: waits between attempts (default: :func:`wait_or_stop` on ``stop``; tests pass one
            that records the waits and returns at once).
        clock: monotonic seconds for the deadline (tests pass a fake).
        jitter: the backoff's random draw (tests pass a fixed one).
        on_delivered: awaited with each batch the collector accepted, before ``ship`` returns
            (so before the caller moves the checkpoint): the GenAI metrics. Not called in a dry
            run, nor for a batch refused for good.

    Each failed attempt is classified in :meth:`_retryable`: today a delivery is either final
    (accepted, or refused for good) or worth another try. A later "stop and wait" verdict (a
    refused credential: keep the batch, do not dead-letter) belongs there.
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
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Jitter = random.uniform,
        on_delivered: Callable[[Sequence[ReadableSpan]], Awaitable[None]] | None = None,
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
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._log = RateLimitedLog(_logger)
        self._on_delivered = on_delivered

    async def ship(
        self,
        spans: Sequence[ReadableSpan],
        ids: Sequence[str],
        summary: ExportSummary,
        *,
        kind: str = "trace",
        on_wait: Callable[[], None] | None = None,
        on_accepted: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Deliver ``spans`` and count them in ``summary``; True if the collector took them.

        ``ids`` name the records in the batch for error messages and the dead-letter file. A
        batch refused for good is dead-lettered and False is returned: the caller may move on,
        the records are reported, not lost. ``on_wait`` is called on every retry, beside the
        shipper's own (a worker's heartbeat). ``on_accepted`` is awaited as soon as the collector
        took the batch, before anything slower (the GenAI metrics): the socket books the traces it
        delivered there, so the API poll beside it never sends them again.

        Raises:
            Stopped: shutdown was requested before the batch was accepted.
            UndeliveredError: the deadline passed before the batch was accepted.
        """
        if not spans:
            return True
        delivery = await self._send(spans, ids, on_wait)
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
        if on_accepted is not None:
            await on_accepted()
        if self._on_delivered is not None and not self._dry_run:
            await self._on_delivered(spans)
        return True

    async def _send(
        self,
        spans: Sequence[ReadableSpan],
        ids: Sequence[str],
        on_wait: Callable[[], None] | None,
    ) -> Delivery:
        if self._dry_run:
            return Delivery(delivered=True)
        started = self._clock()
        attempt = 0
        while True:
            delivery = await asyncio.to_thread(deliver, self._exporter, spans)
            if not self._retryable(delivery):
                return delivery
            self._metrics.export_failures.inc()
            elapsed = self._clock() - started
            if self._deadline is not None and elapsed >= self._deadline:
                raise UndeliveredError(list(ids), delivery.message or "export failed")
            wait = backoff_delay(
                attempt,
                initial=self._initial,
                maximum=self._max,
                retry_after=delivery.retry_after,
                retry_after_cap=self._max * _RETRY_AFTER_FACTOR,
                jitter=self._jitter,
            )
            if self._deadline is not None:
                # The last try comes at the deadline, even when the collector asked for longer.
                wait = min(wait, max(0.0, self._deadline - elapsed))
            self._log.warning(
                "export",
                "export of %d spans failed (%s); retrying in %.1fs, the checkpoint waits",
                len(spans),
                delivery.message or "no detail",
                wait,
            )
            self._metrics.retries.labels(hop="collector").inc()
            for beat in (self._on_wait, on_wait):
                if beat is not None:
                    beat()
            if self._sleep is not None:
                await self._sleep(wait)
            else:
                await wait_or_stop(self._stop, wait)
            if self._stop.is_set():
                raise Stopped
            attempt += 1

    @staticmethod
    def _retryable(delivery: Delivery) -> bool:
        """Whether to send the batch again (neither accepted nor refused for good)."""
        return not (delivery.delivered or delivery.permanent)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
