"""Booking what the collector did with a request: spans exported (or partly rejected) counted
in the summary and the metrics, a request refused for good written to the dead-letter file.

Every span a batch held ends up in one of these counts, so nothing is lost without a trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from .sink import Delivery, spans_to_otlp_json
from .summary import ExportSummary
from .telemetry import DeadLetter, Metrics

__all__ = ["Outcomes"]

_logger = logging.getLogger(__name__)


class Outcomes:
    """Counts accepted spans and dead-letters refused ones.

    Args:
        metrics: counters to update.
        dead_letter: where refused batches go.
    """

    def __init__(self, *, metrics: Metrics, dead_letter: DeadLetter) -> None:
        self._metrics = metrics
        self._dead_letter = dead_letter

    def accepted(
        self, spans: Sequence[ReadableSpan], delivery: Delivery, summary: ExportSummary, kind: str
    ) -> None:
        """The collector took the request: count it (and the spans a partial_success refused)."""
        sent = len(spans)
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

    def refused(
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
        self._dead_letter.write(
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
            self._dead_letter.path,
        )
