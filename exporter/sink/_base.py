"""What every sink shares: the :class:`Delivery` result, counters and quiet failure logging.

The worker needs more than the SDK's ``SUCCESS``/``FAILURE``: whether the receiver refused part
of a batch (OTLP ``partial_success``), whether sending the batch again can help, and how long the
receiver asked us to wait. :meth:`DeliveringExporter.deliver` answers that and never raises, so a
collector outage is a value the worker acts on (re-send later, checkpoint waits), not an
exception unwinding through the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .._ratelimit import RateLimitedLog

__all__ = [
    "DeliveringExporter",
    "Delivery",
    "ExportStats",
    "FailureKind",
    "display_url",
    "one_line",
]

#: Why a batch was not delivered, which decides what the shipper does with it:
#:
#: * ``transient``: the collector is down, busy or slow; send the same batch again later.
#: * ``configuration``: the credential, the URL path, the method or the protocol is wrong; no
#:   batch can get through until someone fixes it, so delivery stops (the checkpoint waits,
#:   nothing is dead-lettered) and tries again with backoff.
#: * ``data``: the collector read this batch and refused it (HTTP 400, gRPC
#:   ``INVALID_ARGUMENT``); it goes to the dead-letter file.
#: * ``too_large``: the request is over the collector's size limit (gRPC
#:   ``RESOURCE_EXHAUSTED`` "larger than max", HTTP 413); smaller batches may pass.
FailureKind = Literal["transient", "configuration", "data", "too_large"]

_logger = logging.getLogger(__name__)

#: Seconds during which an identical failure message is logged only once.
DEFAULT_LOG_INTERVAL: Final = 60.0
#: Header values shorter than this are not scrubbed from messages: they cannot be secrets and
#: replacing "1" or "on" everywhere would make messages unreadable.
_MIN_SECRET_LENGTH: Final = 3
_REDACTED: Final = "[redacted]"
_FAILURE_WORDS: Final = {
    "data": "permanently",
    "configuration": "(delivery waits until the configuration is fixed)",
    "too_large": "(the batch is too large; it will be split)",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of sending one batch.

    Attributes:
        delivered: the receiver accepted the request (possibly only partly, see ``rejected``).
        rejected: spans the receiver refused in an OTLP ``partial_success``; they are gone and
            sending them again will not help.
        message: what went wrong, or the ``partial_success`` error message. Names the endpoint
            and the status, never header values.
        permanent: sending the same batch again cannot succeed (HTTP 400, gRPC
            ``INVALID_ARGUMENT``, ``UNAUTHENTICATED``, ...): the worker should dead-letter it
            rather than wait.
        retry_after: seconds the receiver asked us to wait before sending again (HTTP
            ``Retry-After``, gRPC ``RetryInfo``), when it said so.
        failure: why it failed, when the sink knows better than ``permanent`` alone says
            (see :data:`FailureKind`); ``None`` leaves it to :attr:`kind`'s default.
    """

    delivered: bool
    rejected: int = 0
    message: str = ""
    permanent: bool = False
    retry_after: float | None = None
    failure: FailureKind | None = None

    @property
    def kind(self) -> FailureKind:
        """The failure class of an undelivered batch: ``failure`` when the sink set one, else
        ``data`` for a permanent failure and ``transient`` for any other."""
        if self.failure is not None:
            return self.failure
        return "data" if self.permanent else "transient"


@dataclass(frozen=True, slots=True)
class ExportStats:
    """A snapshot of an exporter's counters (for the worker's Prometheus metrics).

    Attributes:
        exported_spans: spans the receiver accepted.
        rejected_spans: spans the receiver refused in a ``partial_success``.
        failed_requests: batches that were not delivered (any reason).
    """

    exported_spans: int = 0
    rejected_spans: int = 0
    failed_requests: int = 0


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to put in messages and logs.

    Why: ``https://user:token@host/...`` is a legal endpoint, and the credentials must not leak
    into a Delivery message or a log line.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme or not parts.hostname:
        return url
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def one_line(text: str, limit: int = 300) -> str:
    """Server-provided text squeezed to one line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _FailureLog:
    """A failure logged once per interval per distinct message, and the recovery once.

    Why: the sidecar re-sends a failing batch every few seconds during a collector outage; one
    line a minute with a repeat count is as informative as hundreds of identical lines.
    """

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._log = RateLimitedLog(_logger, interval=interval, clock=clock, count_repeats=True)
        self._lock = threading.Lock()
        self._failing = False

    def failure(self, message: str, *, level: int, failed: bool = True) -> None:
        """Log ``message`` unless it was logged less than an interval ago.

        ``failed=False`` marks a warning that is not a failure (a partial success): it needs no
        "succeeded again" line afterwards.
        """
        with self._lock:
            self._failing = self._failing or failed
        self._log.log(message, level, "%s", message)

    def success(self, target: str) -> None:
        """Log the first success after failures."""
        with self._lock:
            if not self._failing:
                return
            self._failing = False
        self._log.reset()
        _logger.info("export to %s succeeded again", target)


class DeliveringExporter(SpanExporter):
    """Base of the sinks: a ``SpanExporter`` whose :meth:`deliver` says what happened.

    Subclasses implement :meth:`_deliver` (one attempt, no retry: the worker re-sends, so that
    there is one retry layer per hop). This base turns unexpected exceptions into a failed
    :class:`Delivery`, keeps the counters, scrubs header values out of messages and rate-limits
    the failure logs.

    Args:
        target: where spans go, for messages and logs (endpoint URL or path, no credentials).
        secrets: values (OTLP header values) that must never appear in a message or a log line.
        log_interval: seconds during which an identical failure is logged only once.
        clock: monotonic clock for the log rate limit (tests pass a fake).
    """

    #: Whether an empty batch is sent (a connectivity probe) rather than skipped.
    _probe_when_empty: bool = False

    def __init__(
        self,
        *,
        target: str,
        secrets: Iterable[str] = (),
        log_interval: float = DEFAULT_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        # Longest first, so a secret containing another is scrubbed whole.
        self._secrets = tuple(
            sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        )
        self._failure_log = _FailureLog(log_interval, clock)
        self._stats_lock = threading.Lock()
        self._exported = 0
        self._rejected = 0
        self._failed = 0
        self._shut_down = False

    @property
    def target(self) -> str:
        """Where spans go (endpoint URL, path or stream name), safe to show."""
        return self._target

    @property
    def stats(self) -> ExportStats:
        """A snapshot of the counters since the exporter was built."""
        with self._stats_lock:
            return ExportStats(self._exported, self._rejected, self._failed)

    def deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        """Send one batch once and say what happened.

        Never raises and never retries: a failure comes back as ``delivered=False`` with
        ``permanent`` telling whether sending it again can help.

        An empty batch is a connectivity probe for the network exporters (an empty OTLP
        request, which receivers accept; the ``check`` command uses it) and a no-op for the
        file and console.

        Args:
            spans: the batch, with explicit ids and times (built by the worker).

        Returns:
            The outcome; ``message`` never contains header values.
        """
        if not spans and not self._probe_when_empty:
            return Delivery(delivered=True)
        return self._once(lambda: self._deliver(spans), len(spans))

    def deliver_request(self, body: bytes, *, span_count: int) -> Delivery:
        """Send an encoded ``ExportTraceServiceRequest`` once (a dead-letter replay): like
        :meth:`deliver`, for spans that exist only as the request that carried them.

        Args:
            body: the serialized request.
            span_count: the spans in it (for the counters).

        Returns:
            The outcome; a sink that cannot send requests as they are (file, console) answers
            ``delivered=False`` with a configuration failure.
        """
        return self._once(lambda: self._deliver_request(body), span_count)

    def _once(self, send: Callable[[], Delivery], span_count: int) -> Delivery:
        """One attempt through ``send``, never raising; scrubbed of secrets and counted."""
        if self._shut_down:
            # Not permanent: the batch itself is fine, another exporter can deliver it.
            result = Delivery(delivered=False, message=f"{self._target}: exporter is shut down")
        else:
            try:
                result = send()
            except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
                result = Delivery(
                    delivered=False,
                    message=f"{self._target}: unexpected {type(exc).__name__}: "
                    f"{one_line(str(exc))}",
                )
        result = self._scrub(result)
        self._account(span_count, result)
        return result

    def request_bytes(self, spans: Sequence[ReadableSpan]) -> bytes | None:
        """The request :meth:`deliver` would send for ``spans``, for :meth:`deliver_request`;
        ``None`` from a sink that sends something else (file, console).

        Why: the shipper must know a batch's encoded size to keep it under the collector's
        limit; encoding it once, and sending those very bytes, saves a second pass over every
        attribute of every span.
        """
        return None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The SDK interface: :meth:`deliver` folded to ``SUCCESS`` / ``FAILURE``."""
        return (
            SpanExportResult.SUCCESS if self.deliver(spans).delivered else SpanExportResult.FAILURE
        )

    def shutdown(self) -> None:
        """Release the connection or file; later deliveries fail (not permanently)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered: every delivery is complete when :meth:`deliver` returns."""
        return True

    # --- for subclasses -------------------------------------------------------------------
    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        """One attempt at sending ``spans``; may raise (the base turns it into a Delivery)."""
        raise NotImplementedError

    def _deliver_request(self, body: bytes) -> Delivery:
        """One attempt at sending an encoded request (network sinks override it)."""
        return Delivery(
            delivered=False,
            message=f"{self._target}: this sink cannot send encoded requests (use an OTLP sink)",
            failure="configuration",
        )

    def _close(self) -> None:
        """Release resources (called once, by :meth:`shutdown`)."""

    # --- internals -------------------------------------------------------------------------
    def _scrub(self, result: Delivery) -> Delivery:
        # Server-provided text (error details, response bodies) is echoed in messages, and a
        # server may quote what we sent; scrub every header value whatever its origin.
        message = result.message
        for secret in self._secrets:
            message = message.replace(secret, _REDACTED)
        if message == result.message:
            return result
        return replace(result, message=message)

    def _account(self, count: int, result: Delivery) -> None:
        with self._stats_lock:
            if result.delivered:
                rejected = min(max(result.rejected, 0), count)
                self._exported += count - rejected
                self._rejected += rejected
            else:
                self._failed += 1
        if not result.delivered:
            kind = _FAILURE_WORDS.get(result.kind, "(will be retried)")
            self._failure_log.failure(
                f"span export failed {kind}: {result.message}",
                level=logging.ERROR
                if result.kind in ("data", "configuration")
                else logging.WARNING,
            )
        elif result.rejected or result.message:
            # OTLP partial_success: rejected spans are lost; a message alone is a warning.
            self._failure_log.failure(
                f"{self._target} rejected {result.rejected} of {count} spans: "
                f"{result.message or '(no message)'}",
                level=logging.WARNING,
                failed=False,
            )
        else:
            self._failure_log.success(self._target)
