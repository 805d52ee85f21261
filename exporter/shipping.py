"""Delivery of span batches: the one retry layer for the collector hop, and its accounting.

The sink's exporters never retry; this does. A batch is re-sent with exponential backoff and
jitter (honouring a server's retry hint) until the collector accepts it: forever in the sidecar,
until a deadline in the one-shot job. Backoff waits on the shutdown event, so SIGTERM is not held
up by a down collector. Each failure is handled by its class (``Delivery.kind``):

* transient (down, busy, slow): re-sent with backoff, the checkpoint waits.
* configuration (a refused credential, a wrong path or method, the wrong protocol): no batch can
  pass until someone fixes it. Nothing is dead-lettered and the checkpoint waits; the shipper is
  ``blocked`` (the sidecar's /readyz says why), logs the cause once per interval and keeps
  trying with backoff. The one-shot job gives up after ``config_attempts`` tries with
  :class:`~exporter.errors.DeliveryBlockedError`, so ``export`` exits 1 naming the cause.
* too large (gRPC ``RESOURCE_EXHAUSTED`` "larger than max", HTTP 413): the batch is split in
  halves and each is shipped; a single span the collector still refuses is dead-lettered with
  its size. Batches are also kept under ``max_bytes`` (the encoded request) before sending.
* data (HTTP 400, gRPC ``INVALID_ARGUMENT``): the batch is written to the dead-letter file as
  OTLP JSON, counted and logged; spans refused inside an OTLP ``partial_success`` are counted
  and logged (the protocol does not say which ones).

The parts: :class:`~exporter._batch_split.BatchSplitter` cuts batches, the retry loop is
:class:`~exporter._collector_send.CollectorSender`, the outcomes are booked by
:class:`~exporter._outcomes.Outcomes`; the :class:`Shipper` ties them together and runs the
delivery hooks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from ._batch_split import BatchSplitter, halves
from ._collector_send import CollectorSender
from ._outcomes import Outcomes
from ._retry import Jitter, wait_or_stop
from .errors import Stopped, UndeliveredError
from .sink import DeliveringExporter
from .summary import MAX_NAMED_FAILURES, ExportSummary
from .telemetry import DeadLetter, Metrics

__all__ = [
    "MAX_NAMED_FAILURES",
    "ExportSummary",
    "Shipper",
    "Stopped",
    "UndeliveredError",
    "wait_or_stop",
]

_logger = logging.getLogger(__name__)

#: Tries a one-shot job gives a configuration failure before it names it and exits.
DEFAULT_CONFIG_ATTEMPTS: Final = 3
#: The encoded request size a batch is kept under by default (the gRPC default limit is 4 MiB).
DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024


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
        on_delivered: awaited with the spans the collector accepted, before ``ship`` returns
            (so before the caller moves the checkpoint): the GenAI metrics. Not called in a dry
            run, nor for spans refused for good.
        max_bytes: the encoded request size a batch is split under before it is sent (None:
            no limit); a single span over it is sent alone.
        config_attempts: tries a configuration failure gets when there is a deadline (the
            one-shot job) before :class:`DeliveryBlockedError`; the sidecar tries forever.

    Attributes:
        blocked: why delivery is stopped by a configuration failure (None while it works): the
            sidecar is not ready while it is set.
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
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        config_attempts: int = DEFAULT_CONFIG_ATTEMPTS,
    ) -> None:
        self.dead_letter = dead_letter
        self._stop = stop
        self._dry_run = dry_run
        self._sleep = sleep
        self._on_delivered = on_delivered
        self._splitter = BatchSplitter(
            max_bytes=max_bytes,
            dry_run=dry_run,
            request=exporter.request_bytes if isinstance(exporter, DeliveringExporter) else None,
        )
        self._outcomes = Outcomes(metrics=metrics, dead_letter=dead_letter)
        self._sender = CollectorSender(
            exporter=exporter,
            metrics=metrics,
            stop=stop,
            wait=self._wait,
            deadline_seconds=deadline_seconds,
            retry_initial_seconds=retry_initial_seconds,
            retry_max_seconds=retry_max_seconds,
            dry_run=dry_run,
            on_wait=on_wait,
            clock=clock,
            jitter=jitter,
            config_attempts=config_attempts,
        )

    @property
    def blocked(self) -> str | None:
        """Why delivery is stopped by a configuration failure (None while it works)."""
        return self._sender.blocked

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
        shipper's own (a worker's heartbeat). ``on_accepted`` is awaited once the collector took
        the batch (or a part of it), before anything slower (the GenAI metrics): the socket books
        the traces it delivered there, so the API poll beside it never sends them again.

        Raises:
            Stopped: shutdown was requested before the batch was accepted.
            UndeliveredError: the deadline passed before the batch was accepted.
        """
        if not spans:
            return True
        parts = await asyncio.to_thread(self._splitter.encoded_parts, list(spans), list(ids))
        accepted: list[list[ReadableSpan]] = []
        results = [
            await self._ship_part(p, i, summary, kind, on_wait, accepted, body)
            for p, i, body in parts
        ]
        if accepted:
            if on_accepted is not None:
                await on_accepted()
            if self._on_delivered is not None and not self._dry_run:
                for part in accepted:
                    await self._on_delivered(part)
        return all(results)

    async def _ship_part(
        self,
        spans: list[ReadableSpan],
        ids: list[str],
        summary: ExportSummary,
        kind: str,
        on_wait: Callable[[], None] | None,
        accepted: list[list[ReadableSpan]],
        body: bytes | None = None,
    ) -> bool:
        delivery = await self._sender.send(spans, ids, on_wait, body=body)
        sent = len(spans)
        if not delivery.delivered and delivery.kind == "too_large":
            if sent > 1:
                _logger.warning(
                    "the collector refused a batch of %d spans as too large (%s); sending it "
                    "in halves",
                    sent,
                    delivery.message,
                )
                (left, left_ids), (right, right_ids) = halves(spans, ids)
                first = await self._ship_part(left, left_ids, summary, kind, on_wait, accepted)
                second = await self._ship_part(right, right_ids, summary, kind, on_wait, accepted)
                return first and second
            size = self._splitter.encoded_size(spans)
            self._outcomes.refused(
                spans,
                ids,
                summary,
                reason="too_large",
                message=f"a single span of {size} bytes is over the collector's limit: "
                f"{delivery.message}",
                size_bytes=size,
            )
            return False
        if not delivery.delivered:
            self._outcomes.refused(spans, ids, summary, reason="refused", message=delivery.message)
            return False
        self._outcomes.accepted(spans, delivery, summary, kind)
        accepted.append(spans)
        return True

    async def _wait(self, seconds: float) -> None:
        """A backoff wait: the ``sleep`` given (looked up at each wait), else on ``stop``."""
        if self._sleep is not None:
            await self._sleep(seconds)
        else:
            await wait_or_stop(self._stop, seconds)
