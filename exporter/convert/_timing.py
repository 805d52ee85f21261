"""When an LLM call (and a run) started and ended, from whatever the records carry.

Letta Cloud sends ``latency_ms``; a self-hosted 0.16.8 server does not, but its StepMetrics carry
``llm_request_ns`` (and, on other versions, the absolute ``llm_request_start_ns``). The trace's
``created_at`` is written when the response has arrived, so it is the call's end. In order:

1. ``latency_ms``: end = created_at, start = end - latency;
2. ``llm_request_start_ns``: start = it, end = start + ``llm_request_ns`` (or created_at);
3. ``llm_request_ns``: end = created_at, start = end - duration;
4. nothing: a zero-length span at created_at.

Without ``created_at`` the anchor is the next thing known (metrics start, ``updated_at``,
``Step.created_at``). The span says which source gave its duration (``letta.duration.source``)
and its timestamps (``letta.timestamp.source``). All times are integer nanoseconds since the
Unix epoch; naive datetimes are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from exporter.models import ProviderTrace, Run, Step, StepMetrics

from ._attributes import INT64_MAX, SpanAttributes
from ._semconv import (
    SOURCE_CREATED_AT,
    SOURCE_LATENCY_MS,
    SOURCE_METRICS_DURATION,
    SOURCE_METRICS_START,
    SOURCE_NONE,
    SOURCE_STEP_CREATED_AT,
    SOURCE_UPDATED_AT,
)

__all__ = ["Timing", "call_timing", "datetime_to_ns", "run_timing"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS: Final = 1_000_000
# Letta did not exist before this: an earlier record time (created_at: 0) is a placeholder or a
# bug upstream, and its span would sit decades back in a viewer. It is kept, and said.
IMPLAUSIBLE_BEFORE_NS: Final = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Timing:
    """A span's start and end, and where each came from."""

    start_ns: int
    end_ns: int
    duration_source: str
    timestamp_source: str


def datetime_to_ns(value: datetime | None) -> int | None:
    """Nanoseconds since the epoch, exactly (no float rounding); ``None`` if unrepresentable."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return ns if 0 <= ns <= INT64_MAX else None


def _valid_ns(value: object, *, positive: bool) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    low = 1 if positive else 0
    return value if low <= value <= INT64_MAX else None


def _clamp(start: int, end: int, out: SpanAttributes) -> tuple[int, int]:
    if start < 0:
        out.warn("timing: the start would be before 1970; clamped")
        start = 0
    end = min(max(end, start), INT64_MAX)
    return min(start, end), end


def call_timing(
    trace: ProviderTrace, metrics: StepMetrics | None, step: Step | None, out: SpanAttributes
) -> Timing:
    """The LLM call's start and end (see the module docstring for the order of sources)."""
    created = datetime_to_ns(trace.created_at)
    if trace.created_at is not None and created is None:
        out.warn("created_at: outside the range of OTel timestamps")
    elif created is not None and created < IMPLAUSIBLE_BEFORE_NS:
        out.warn("created_at: before 2000-01-01; the span's time is the record's, likely wrong")
    latency = trace.latency_ms
    if latency is not None and not 0 <= latency <= INT64_MAX // _NS_PER_MS:
        out.warn("latency_ms: not a usable duration")
        latency = None
    m_start = _valid_ns(metrics.llm_request_start_ns, positive=True) if metrics else None
    m_duration = _valid_ns(metrics.llm_request_ns, positive=False) if metrics else None

    # The end anchor when created_at is missing: what else says when the call ended.
    end_anchor, end_source = created, SOURCE_CREATED_AT
    if end_anchor is None:
        for value, source in (
            (datetime_to_ns(trace.updated_at), SOURCE_UPDATED_AT),
            (datetime_to_ns(step.created_at) if step else None, SOURCE_STEP_CREATED_AT),
        ):
            if value is not None:
                end_anchor, end_source = value, source
                break

    if latency is not None:
        duration = latency * _NS_PER_MS
        if created is None and m_start is not None:
            start, end = _clamp(m_start, m_start + duration, out)
            return Timing(start, end, SOURCE_LATENCY_MS, SOURCE_METRICS_START)
        if end_anchor is not None:
            start, end = _clamp(end_anchor - duration, end_anchor, out)
            return Timing(start, end, SOURCE_LATENCY_MS, end_source)
    if m_start is not None:
        if m_duration is not None:
            end = m_start + m_duration
        elif created is not None and created >= m_start:
            end = created
        else:
            end = m_start
        start, end = _clamp(m_start, end, out)
        return Timing(start, end, SOURCE_METRICS_START, SOURCE_METRICS_START)
    if end_anchor is None:
        out.warn("timing: no timestamp in the trace, step or metrics; the span is at time 0")
        return Timing(0, 0, SOURCE_NONE, SOURCE_NONE)
    if m_duration is not None:
        start, end = _clamp(end_anchor - m_duration, end_anchor, out)
        return Timing(start, end, SOURCE_METRICS_DURATION, end_source)
    return Timing(end_anchor, end_anchor, SOURCE_NONE, end_source)


def run_timing(
    run: Run, first_start_ns: int | None, last_end_ns: int | None, out: SpanAttributes
) -> tuple[int, int]:
    """A run span's extent: from the earliest known start to the latest known end.

    The run's own ``created_at``/``completed_at`` (and ``total_duration_ns``) are widened to
    cover its LLM spans (``first_start_ns``/``last_end_ns``), so children never stick out.
    """
    created = datetime_to_ns(run.created_at)
    completed = datetime_to_ns(run.completed_at)
    if created is not None and created < IMPLAUSIBLE_BEFORE_NS:
        out.warn("run.created_at: before 2000-01-01; the span's time is the record's, likely wrong")
    total = _valid_ns(run.total_duration_ns, positive=False)
    starts = [t for t in (created, _valid_ns(first_start_ns, positive=False)) if t is not None]
    ends = [t for t in (completed, _valid_ns(last_end_ns, positive=False)) if t is not None]
    if created is not None and total is not None:
        ends.append(min(created + total, INT64_MAX))
    if not starts and not ends:
        out.warn("timing: the run has no timestamps and no spans were given; the span is at time 0")
        return 0, 0
    start = min(starts) if starts else min(ends)
    end = max(ends) if ends else start
    return start, max(end, start)
