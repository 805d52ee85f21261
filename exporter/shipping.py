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
from .errors import DeliveryBlockedError, Stopped, UndeliveredError
from .sink import Delivery, deliver, spans_to_otlp_json
from .sink._encode import SpanEncoder
from .telemetry import DeadLetter, Metrics

__all__ = ["ExportSummary", "Shipper", "Stopped", "UndeliveredError", "wait_or_stop"]

_logger = logging.getLogger(__name__)

MAX_NAMED_FAILURES: Final = 100
#: Tries a one-shot job gives a configuration failure before it names it and exits.
DEFAULT_CONFIG_ATTEMPTS: Final = 3
#: The encoded request size a batch is kept under by default (the gRPC default limit is 4 MiB).
DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024
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
        self._max_bytes = max_bytes
        self._config_attempts = max(config_attempts, 1)
        self._encoder = SpanEncoder()
        self._log = RateLimitedLog(_logger)
        self.blocked: str | None = None
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
        shipper's own (a worker's heartbeat). ``on_accepted`` is awaited once the collector took
        the batch (or a part of it), before anything slower (the GenAI metrics): the socket books
        the traces it delivered there, so the API poll beside it never sends them again.

        Raises:
            Stopped: shutdown was requested before the batch was accepted.
            UndeliveredError: the deadline passed before the batch was accepted.
        """
        if not spans:
            return True
        parts = self._under_max_bytes(list(spans), list(ids))
        accepted: list[list[ReadableSpan]] = []
        results = [await self._ship_part(p, i, summary, kind, on_wait, accepted) for p, i in parts]
        if accepted:
            if on_accepted is not None:
                await on_accepted()
            if self._on_delivered is not None and not self._dry_run:
                for part in accepted:
                    await self._on_delivered(part)
        return all(results)

    def _under_max_bytes(
        self, spans: list[ReadableSpan], ids: list[str]
    ) -> list[tuple[list[ReadableSpan], list[str]]]:
        """The batch cut in halves until each encoded request is under ``max_bytes``."""
        if self._max_bytes is None or len(spans) < 2 or self._dry_run:
            return [(spans, ids)]
        # The cheap bound first: most batches are far under the limit and need no encoding.
        if _size_ceiling(spans) <= self._max_bytes:
            return [(spans, ids)]
        if len(self._encoder.encode(spans)) <= self._max_bytes:
            return [(spans, ids)]
        (left, left_ids), (right, right_ids) = _halves(spans, ids)
        return self._under_max_bytes(left, left_ids) + self._under_max_bytes(right, right_ids)

    async def _ship_part(
        self,
        spans: list[ReadableSpan],
        ids: list[str],
        summary: ExportSummary,
        kind: str,
        on_wait: Callable[[], None] | None,
        accepted: list[list[ReadableSpan]],
    ) -> bool:
        delivery = await self._send(spans, ids, on_wait)
        sent = len(spans)
        if not delivery.delivered and delivery.kind == "too_large":
            if sent > 1:
                _logger.warning(
                    "the collector refused a batch of %d spans as too large (%s); sending it "
                    "in halves",
                    sent,
                    delivery.message,
                )
                (left, left_ids), (right, right_ids) = _halves(spans, ids)
                first = await self._ship_part(left, left_ids, summary, kind, on_wait, accepted)
                second = await self._ship_part(right, right_ids, summary, kind, on_wait, accepted)
                return first and second
            size = len(self._encoder.encode(spans))
            self._dead_letter(
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
            self._dead_letter(spans, ids, summary, reason="refused", message=delivery.message)
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
        accepted.append(spans)
        return True

    def _dead_letter(
        self,
        spans: Sequence[ReadableSpan],
        ids: Sequence[str],
        summary: ExportSummary,
        *,
        reason: str,
        message: str,
        **extra: Any,
    ) -> None:
        """A batch the collector refused for good: written down, counted, logged."""
        sent = len(spans)
        summary.undelivered += sent
        self._metrics.traces_failed.labels(reason=reason).inc(sent)
        summary.fail(f"collector refused {sent} spans for good: {message}")
        self.dead_letter.write(
            reason,
            message=message,
            ids=list(ids),
            otlp_json=spans_to_otlp_json(spans),
            **extra,
        )
        _logger.error(
            "collector refused a batch of %d spans for good (%s); it is in the dead-letter file %s",
            sent,
            message,
            self.dead_letter.path,
        )

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
        refused = 0
        while True:
            delivery = await asyncio.to_thread(deliver, self._exporter, spans)
            if delivery.delivered:
                self._unblock()
            if not self._retryable(delivery):
                return delivery
            self._metrics.export_failures.inc()
            elapsed = self._clock() - started
            if delivery.kind == "configuration":
                refused += 1
                self._block(delivery.message or "the collector refuses the configuration")
                if self._deadline is not None and refused >= self._config_attempts:
                    raise DeliveryBlockedError(list(ids), self.blocked or "refused")
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
            if delivery.kind != "configuration":
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
        """Whether to send the batch again: not accepted, and neither refused for good (data)
        nor too large (split by the caller). A configuration failure is sent again: it never
        moves the checkpoint, never dead-letters."""
        if delivery.delivered:
            return False
        return delivery.kind in ("transient", "configuration")

    def _block(self, reason: str) -> None:
        """Delivery stops on a configuration failure: said once per interval, readiness off."""
        self.blocked = reason
        self._log.log(
            "blocked",
            logging.ERROR,
            "the collector refuses this exporter's configuration (%s); delivery is stopped, "
            "nothing is dead-lettered and the checkpoint waits; trying again with backoff",
            reason,
        )

    def _unblock(self) -> None:
        if self.blocked is None:
            return
        self.blocked = None
        self._log.reset()
        _logger.info("the collector accepts deliveries again")


#: Bytes of protobuf framing a span, an attribute or an event can take beyond its own text.
_SPAN_FRAMING: Final = 160
_FIELD_FRAMING: Final = 16


def _size_ceiling(spans: Sequence[ReadableSpan]) -> int:
    """More than the encoded request can be (text counted at 4 bytes a character unless it is
    ASCII), found without encoding: a batch under the limit by this bound needs no check."""
    total = 0
    resources: set[int] = set()
    for span in spans:
        total += _SPAN_FRAMING + _text_size(span.name) + _attributes_size(span.attributes)
        total += _text_size(span.status.description or "")
        if id(span.resource) not in resources:
            resources.add(id(span.resource))
            total += _SPAN_FRAMING + _attributes_size(getattr(span.resource, "attributes", None))
        for event in span.events:
            total += _SPAN_FRAMING + _text_size(event.name) + _attributes_size(event.attributes)
        for link in span.links:
            total += _SPAN_FRAMING + _attributes_size(link.attributes)
    return total


def _attributes_size(attributes: Any) -> int:
    if not attributes:
        return 0
    return sum(
        _FIELD_FRAMING + _text_size(key) + _value_size(value) for key, value in attributes.items()
    )


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, (bool, int, float)):
        return _FIELD_FRAMING
    if isinstance(value, (bytes, bytearray)):
        return len(value) + _FIELD_FRAMING
    if isinstance(value, (tuple, list)):
        return sum(_FIELD_FRAMING + _value_size(item) for item in value)
    return _text_size(str(value)) + _FIELD_FRAMING


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


def _halves(
    spans: list[ReadableSpan], ids: list[str]
) -> tuple[tuple[list[ReadableSpan], list[str]], tuple[list[ReadableSpan], list[str]]]:
    """Two halves of a batch; the ids are cut alike when there is one per span."""
    middle = len(spans) // 2
    if len(ids) == len(spans):
        return (spans[:middle], ids[:middle]), (spans[middle:], ids[middle:])
    return (spans[:middle], ids), (spans[middle:], ids)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
