"""Traces the socket delivered, so the API poll that reconciles beside it does not ship them again.

With the socket on, the sidecar runs two workers: one over the socket (live, every record Letta
pushes) and one polling the API (what the socket missed: the exporter was down, Letta's tries
were spent, the journal was full). Both would make the same span for a trace both see. The
socket worker adds each provider trace id it delivered to :class:`DeliveredTraces`, a bounded
set persisted beside the state file; the API worker's source is wrapped in
:class:`SkipDelivered`, which turns a trace found there into a :class:`~exporter.source.Skipped`
event (the cursor moves, nothing is sent). The runs the socket worker saw are remembered too:
their parent spans are the socket worker's, so the API worker leaves them alone.

Bounded: the newest ``capacity`` traces (and runs) are kept; a trace older than that which the
poll finds again is shipped again, with the same trace and span ids (a backend keeps one).
The file is the counted-once ledger's format (:class:`~exporter.genai_metrics.CountedLedger`):
one key per line, appended with an fsync per batch, rewritten when it doubles.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Final

from .convert import span_id_for
from .genai_metrics import CountedLedger
from .source import Awaiting, Event, Found, Missing, Skipped, Source

__all__ = ["DEFAULT_CAPACITY", "DeliveredTraces", "SkipDelivered", "delivered_path"]

_logger = logging.getLogger(__name__)

#: Traces remembered (about 2.5 MB of memory and 5 MB of file at most).
DEFAULT_CAPACITY: Final = 50_000
#: The ledger's first 128 bits say what a key is: a provider trace, or a run.
_TRACE: Final = 1
_RUN: Final = 2
_STEP: Final = 3


def delivered_path(state_path: Path) -> Path:
    """The file beside the state file: ``<state file>.delivered``."""
    return state_path.with_name(state_path.name + ".delivered")


class DeliveredTraces:
    """A bounded, persisted set of provider trace ids (and run ids) delivered by the socket.

    Args:
        path: the file (``None``: memory only).
        capacity: traces and runs kept, newest first.
    """

    def __init__(self, path: Path | str | None = None, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._ledger = CountedLedger(path, capacity=capacity)

    def __len__(self) -> int:
        return len(self._ledger)

    def has_trace(self, trace_id: str) -> bool:
        """Whether the socket delivered this provider trace."""
        return self._ledger.contains(_TRACE, span_id_for(trace_id))

    def has_run(self, run_id: str) -> bool:
        """Whether the socket delivered a trace of this run (it ships the run's parent span)."""
        return self._ledger.contains(_RUN, span_id_for(run_id))

    def has_step(self, step_id: str) -> bool:
        """Whether the socket delivered a trace of this step (the API may never return it: a
        compacted step's traces)."""
        return self._ledger.contains(_STEP, span_id_for(step_id))

    def add(
        self, trace_ids: Iterable[str], run_ids: Iterable[str] = (), step_ids: Iterable[str] = ()
    ) -> None:
        """Remember delivered traces, their runs and steps, on disk before returning (one
        fsync)."""
        keys = [f"{_TRACE:032x}{span_id_for(t):016x}" for t in trace_ids]
        keys += [f"{_RUN:032x}{span_id_for(r):016x}" for r in set(run_ids)]
        keys += [f"{_STEP:032x}{span_id_for(s):016x}" for s in set(step_ids)]
        self._ledger.add(keys)


class SkipDelivered:
    """Another source's events, with the traces the socket delivered already turned into
    :class:`~exporter.source.Skipped` (they only move the cursor).

    Args:
        source: the source to filter (the API source).
        delivered: what the socket delivered.
    """

    def __init__(self, source: Source, delivered: DeliveredTraces) -> None:
        self._source = source
        self._delivered = delivered
        self.name = source.name
        #: Traces passed over because the socket had delivered them.
        self.skipped = 0

    def __getattr__(self, name: str) -> object:
        # ``order``, ``stats``, ``lookups``: what the worker reads off the source it drives.
        return getattr(self._source, name)

    def stream_key(self) -> str:
        return self._source.stream_key()

    async def aclose(self) -> None:
        await self._source.aclose()

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        async for event in self._source.read(resume=resume, follow=follow):
            skipped = self._skipped(event)
            if skipped is not None:
                self.skipped += 1
                yield skipped
                continue
            yield event

    def _skipped(self, event: Event) -> Skipped | None:
        """The event as a :class:`Skipped` when the socket delivered it already."""
        seen = self._delivered
        if isinstance(event, Found):
            trace = event.trace
            if not trace.id or not seen.has_trace(trace.id):
                return None
            step_id = (event.step.id if event.step else None) or trace.step_id or trace.id
            return Skipped(step_id, position=event.position, step=event.step, seen=True)
        if isinstance(event, Awaiting | Missing) and seen.has_step(event.step_id):
            # The API has no trace for the step (yet, or ever: a compacted step's), the socket
            # delivered one: nothing to wait for, nothing to report.
            return Skipped(event.step_id, position=event.position, step=event.step, seen=True)
        return None
