"""A batch of spans and the bookkeeping that goes with it, applied once the batch is delivered.

Why apart: the checkpoint may only move once the collector accepted (or the shipper reported)
everything in a batch. Until then each handled record waits as an :class:`Entry`; applying the
entries to the stream state is one pure step, easy to test and the only place that writes
pending steps, open runs and the cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from opentelemetry.sdk.trace import ReadableSpan

from .checkpoint import OpenRun, PendingStep, StreamState
from .convert import RunSummary

__all__ = ["Batch", "Entry", "Kind", "apply_delivered"]


class Kind(Enum):
    """What a handled record left to record."""

    SPAN = "span"  # converted: its span is in the batch
    AWAITING = "awaiting"  # its trace is not written yet: kept pending
    MISSING = "missing"  # its trace will not come: reported, its run still gets a parent
    FOREIGN = "foreign"  # another shard exports it, this shard owns its run
    REPORTED = "reported"  # unreadable: reported already, nothing else to keep
    ELSEWHERE = "elsewhere"  # delivered by another worker (the socket's): nothing to keep


@dataclass(slots=True)
class Entry:
    """One handled record inside a batch."""

    step_id: str
    kind: Kind
    run_id: str | None = None
    agent_id: str | None = None
    span_index: int | None = None  # into the batch's spans (``Kind.SPAN``)
    trace_id: str | None = None
    pending: PendingStep | None = None  # ``Kind.AWAITING``
    summary: RunSummary | None = None  # ``Kind.SPAN`` with a run: what the call tells the run


@dataclass(slots=True)
class Batch:
    """Spans to ship, and what to record once they are delivered."""

    spans: list[ReadableSpan] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    last_position: str | None = None

    @property
    def empty(self) -> bool:
        return not self.spans and not self.entries and self.last_position is None

    def trace_ids(self) -> list[str]:
        """The provider trace ids in the batch, for messages and the dead-letter file."""
        return [e.trace_id for e in self.entries if e.trace_id]


def apply_delivered(
    batch: Batch,
    state: StreamState,
    *,
    owns_run: Callable[[str], bool],
    on_missing: Callable[[Entry], None],
) -> None:
    """Record a delivered batch in the stream state (the caller saves it).

    Args:
        batch: the batch the shipper delivered (or reported).
        state: the stream state to update.
        owns_run: whether this shard ships the run's parent span (one shard per run).
        on_missing: called for each step reported missing (dead-letter line, metric, log).
    """
    for entry in batch.entries:
        step_id = entry.step_id
        if entry.kind is Kind.AWAITING:
            assert entry.pending is not None
            state.pending[step_id] = entry.pending
            continue
        if entry.kind is Kind.FOREIGN:
            assert entry.run_id is not None
            _open(state, entry).add(step_id, None, None)
            continue
        state.pending.pop(step_id, None)
        if entry.kind is Kind.MISSING:
            on_missing(entry)
            if entry.run_id and owns_run(entry.run_id):
                # The run still happened (often a failed call): its span shows it.
                _open(state, entry).add(step_id, None, None)
            continue
        if entry.span_index is not None and entry.run_id and owns_run(entry.run_id):
            span = batch.spans[entry.span_index]
            run = _open(state, entry)
            # A step delivered again (asked again by the source) is in the summary already.
            if entry.summary is not None and step_id not in run.step_ids:
                run.summarize(entry.summary)
            run.add(step_id, span.start_time, span.end_time)
    if batch.last_position is not None:
        state.cursor = batch.last_position
    state.delivered += len(batch.spans)


def _open(state: StreamState, entry: Entry) -> OpenRun:
    assert entry.run_id is not None
    return state.open_runs.setdefault(
        entry.run_id, OpenRun(run_id=entry.run_id, agent_id=entry.agent_id)
    )
