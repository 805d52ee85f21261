"""``export --shift-to-now``: move a file's traces forward in time by one offset.

A sample or an old dump lies outside a backend's default view (Phoenix shows the last 7 days,
Jaeger the last hour): shifted so its newest trace ends now, it shows up at once. Every time of
a record (the trace's, its step's, metrics' absolute starts, the run's) moves by the same
offset, so durations and order are kept; ids do not depend on times, so they are kept too.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from .source import TraceRecord, read_trace_file

__all__ = ["newest_time", "shift_offset", "shift_record"]

M = TypeVar("M", bound=BaseModel)


def newest_time(path: Path | str) -> datetime | None:
    """The latest ``created_at`` of the file's traces (a first pass; stdin cannot be read twice,
    so it answers None there and the caller shifts by the first record instead)."""
    if str(path) == "-":
        return None
    newest: datetime | None = None
    with read_trace_file(path, on_invalid=lambda _error: None) as traces:
        for trace in traces:
            when = trace.created_at
            if when is not None and (newest is None or when > newest):
                newest = when
    return newest


def shift_offset(newest: datetime | None, *, now: datetime | None = None) -> timedelta:
    """The offset that moves ``newest`` to ``now`` (none when the file has no times)."""
    if newest is None:
        return timedelta(0)
    return (now or datetime.now(UTC)) - newest


def _moved(model: M | None, delta: timedelta, names: tuple[str, ...]) -> M | None:
    if model is None:
        return None
    update = {n: getattr(model, n) + delta for n in names if getattr(model, n, None) is not None}
    return model.model_copy(update=update) if update else model


def shift_record(record: TraceRecord, delta: timedelta) -> TraceRecord:
    """The record with every time moved by ``delta``."""
    if not delta:
        return record
    ns = int(delta.total_seconds() * 1e9)
    metrics = record.metrics
    if metrics is not None:
        update = {
            n: getattr(metrics, n) + ns
            for n in ("step_start_ns", "llm_request_start_ns")
            if getattr(metrics, n) is not None
        }
        metrics = metrics.model_copy(update=update) if update else metrics
    trace = _moved(record.trace, delta, ("created_at", "updated_at"))
    assert trace is not None
    return dataclasses.replace(
        record,
        trace=trace,
        step=_moved(record.step, delta, ("created_at",)),
        metrics=metrics,
        run=_moved(record.run, delta, ("created_at", "completed_at")),
    )
