"""Sending one request to the collector until it is accepted or refused for good: the retry
loop of the collector hop, by failure class (``Delivery.kind``).

Transient failures are sent again with backoff (a collector's Retry-After as a floor). A
configuration failure is sent again too, but marks delivery ``blocked`` (said once per interval)
and ends a job with a deadline after ``config_attempts`` tries. Data and too-large failures are
returned at once: the caller dead-letters or splits them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from ._ratelimit import RateLimitedLog
from ._retry import Jitter, backoff_delay
from .errors import DeliveryBlockedError, Stopped, UndeliveredError
from .sink import DeliveringExporter, Delivery, deliver
from .telemetry import Metrics

__all__ = ["CollectorSender"]

_logger = logging.getLogger(__name__)

#: How many times the computed backoff cap a collector's Retry-After may ask for.
_RETRY_AFTER_FACTOR: Final = 4.0


class CollectorSender:
    """Sends a request through an exporter, again and again while that can help.

    Args:
        exporter: any SpanExporter (ours report the failure class).
        metrics: failure and retry counters.
        stop: checked after each wait: set means :class:`~exporter.errors.Stopped`.
        wait: waits between attempts (returns early when ``stop`` is set).
        deadline_seconds: None to retry forever (sidecar), else give up after this long.
        retry_initial_seconds, retry_max_seconds: the backoff's first and longest wait.
        dry_run: send nothing, report it delivered.
        on_wait: called on every retry (the worker's heartbeat).
        clock: monotonic seconds for the deadline.
        jitter: the backoff's random draw.
        config_attempts: tries a configuration failure gets when there is a deadline.

    Attributes:
        blocked: why delivery is stopped by a configuration failure (None while it works).
    """

    def __init__(
        self,
        *,
        exporter: SpanExporter,
        metrics: Metrics,
        stop: asyncio.Event,
        wait: Callable[[float], Awaitable[None]],
        deadline_seconds: float | None,
        retry_initial_seconds: float,
        retry_max_seconds: float,
        dry_run: bool,
        on_wait: Callable[[], None] | None,
        clock: Callable[[], float],
        jitter: Jitter,
        config_attempts: int,
    ) -> None:
        self._exporter = exporter
        self._metrics = metrics
        self._stop = stop
        self._wait = wait
        self._deadline = deadline_seconds
        self._initial = retry_initial_seconds
        self._max = retry_max_seconds
        self._dry_run = dry_run
        self._on_wait = on_wait
        self._clock = clock
        self._jitter = jitter
        self._config_attempts = max(config_attempts, 1)
        self._log = RateLimitedLog(_logger)
        self.blocked: str | None = None

    async def send(
        self,
        spans: Sequence[ReadableSpan],
        ids: Sequence[str],
        on_wait: Callable[[], None] | None,
        *,
        body: bytes | None = None,
    ) -> Delivery:
        """The collector's last answer: accepted, or refused in a way a retry cannot fix.

        ``body`` is the request already encoded for these spans (sent as it is), or None.

        Raises:
            Stopped: shutdown was requested during a wait.
            UndeliveredError: the deadline passed.
            DeliveryBlockedError: (with a deadline) the configuration was refused too often.
        """
        if self._dry_run:
            return Delivery(delivered=True)
        started = self._clock()
        attempt = 0
        refused = 0
        while True:
            delivery = await asyncio.to_thread(self._deliver, spans, body)
            if delivery.delivered:
                self._unblock()
            if not _retryable(delivery):
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
            await self._wait(wait)
            if self._stop.is_set():
                raise Stopped
            attempt += 1

    def _deliver(self, spans: Sequence[ReadableSpan], body: bytes | None) -> Delivery:
        exporter = self._exporter
        if body is not None and isinstance(exporter, DeliveringExporter):
            return exporter.deliver_request(body, span_count=len(spans))
        return deliver(exporter, spans)

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


def _retryable(delivery: Delivery) -> bool:
    """Whether to send the batch again: not accepted, and neither refused for good (data) nor
    too large (split by the caller). A configuration failure is sent again: it never moves the
    checkpoint, never dead-letters."""
    if delivery.delivered:
        return False
    return delivery.kind in ("transient", "configuration")
