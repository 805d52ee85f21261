"""The source contract: what every receiver (API, file, socket, database) gives the worker.

A source is read as one ordered stream of events. The worker converts each :class:`Found` into a
span, ships it, and saves the event's ``position`` in the source's checkpoint stream only once that
event and every event before it were delivered (or reported). Resuming is ``read(resume=<the saved
position>)``: the source continues right after it. A position is opaque to everyone but its
source: a short JSON-safe string (a cursor, a journal offset, a ``created_at``/id key).

Events:

* :class:`Found`: a provider trace, with whatever context the source knows beside it (the step,
  its metrics, the run, the agent). Missing context may be filled in by the worker's enrichment
  (API lookups) when an API is configured; a span is made either way.
* :class:`Missing`: a step the source knows of whose trace will never come (the API answered
  ``null`` past the settle time). Reported (dead-letter ``no_trace``), and the run still gets its
  parent span.
* :class:`Unreadable`: a record the source could not read or parse. The worker reports it (log
  line, metric, dead-letter file with the reason and the raw bytes when there are some) and moves
  on: one bad record never holds up the rest.
* :class:`CaughtUp`: nothing more for now. A one-shot export ends here (after shipping what it
  holds); the sidecar ships what it holds and goes on reading (the source itself waits: a poll
  interval, new journal entries, new rows).

Two more events serve a source that keeps state beside its cursor (the API source); a source
with only a cursor never needs them:

* :class:`Awaiting`: a step whose trace is not written yet (Letta writes traces after the step).
  The worker keeps it in the checkpoint's ``pending`` set once the batch it rode in is
  delivered; the source asks again on its next pass and yields :class:`Found` or
  :class:`Missing` for it then.
* :class:`Skipped`: a record this replica does not export (another shard's, or one delivered
  already): it only moves the cursor (and, for a step of a run this shard owns, counts the step
  into the run's parent span).

Each event may say ``fresh=False``: the source asks again about a record it yielded before (a
trace that was pending); the worker does not count it as newly discovered.

Run parent spans: the worker ships a run's ``invoke_agent`` span when the run is over. A source
that knows run statuses (a :class:`Found` with ``run``) gets today's rule: finished, and the
source has gone past its last step. A source that knows no status (the socket) gets the idle
rule: no step of the run for ``run_idle_seconds``. A one-shot export ships every open run at
its end.

Errors that are not one record's fault (Letta unreachable, a refused credential, a lost database
connection) are raised as :class:`~exporter.errors.SourceError` from ``read``; the sidecar backs
off and reads again from the last saved position, the one-shot job exits 1 naming the cause.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from ..models import Agent, ProviderTrace, Run, Step, StepMetrics

__all__ = [
    "Awaiting",
    "CaughtUp",
    "Event",
    "Found",
    "Missing",
    "Skipped",
    "Source",
    "Unreadable",
]


@dataclass(frozen=True, slots=True)
class Found:
    """A provider trace and what its source knows beside it.

    Args:
        trace: the provider trace.
        step, metrics, run, agent: the context the source has (``None``: unknown here).
        position: where to resume after this event; ``None`` when the event moves no cursor.
        origin: the source's name (``api``, ``file``, ``socket``, ``postgres``), for metrics and
            for the spans' ``letta.source.kind``-style provenance.
        fresh: False when the source asks again about a record it yielded before.
    """

    trace: ProviderTrace
    step: Step | None = None
    metrics: StepMetrics | None = None
    run: Run | None = None
    agent: Agent | None = None
    position: str | None = None
    origin: str = ""
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class Missing:
    """A step whose trace will not come (reported; its run still gets a parent span)."""

    step_id: str
    run_id: str | None = None
    agent_id: str | None = None
    reason: str = "no_trace"
    position: str | None = None
    step: Step | None = None
    run: Run | None = None
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record the source could not read: reported, then passed over.

    Args:
        record_id: the record's id when it could be made out (a provider trace or step id).
        reason: a short machine word (``invalid``, ``unreadable``, ``too_large``, ...): the
            metric label and the dead-letter ``reason``.
        detail: one line a person can act on (never a secret).
        raw: the bytes as received, for the dead-letter file (``None`` when there are none).
        position: where to resume after it.
        step: the step the record belongs to, when the source knows it.
        record_kind: what ``record_id`` names (``step``, ``trace``, ``record``): the dead-letter
            line's key is ``<record_kind>_id``.
    """

    record_id: str | None
    reason: str
    detail: str
    raw: bytes | None = None
    position: str | None = None
    step: Step | None = None
    fresh: bool = True
    record_kind: str = "record"


@dataclass(frozen=True, slots=True)
class Awaiting:
    """A step whose trace is not written yet: kept pending, asked again on the next pass.

    Args:
        step_id: the step.
        first_seen: when it was first seen without a trace (Unix seconds).
        attempts: how many times it was asked.
        run_id, agent_id: what the step names.
        position: where to resume after it.
        step, run: the records, when known.
    """

    step_id: str
    first_seen: float
    attempts: int = 1
    run_id: str | None = None
    agent_id: str | None = None
    position: str | None = None
    step: Step | None = None
    run: Run | None = None
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record this replica does not export (another shard's, or delivered before).

    Args:
        step_id: the step.
        position: where to resume after it.
        step: the step, when known.
        seen: delivered before (a step listed twice); False: another shard's.
    """

    step_id: str
    position: str | None = None
    step: Step | None = None
    seen: bool = False


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Everything there is for now has been yielded."""

    position: str | None = None


Event = Found | Missing | Unreadable | CaughtUp | Awaiting | Skipped


class Source(Protocol):
    """A receiver the worker drives (see the module docstring for the rules)."""

    #: ``api``, ``file``, ``socket`` or ``postgres``: the metric label and checkpoint prefix.
    name: str

    def stream_key(self) -> str:
        """The checkpoint stream this source resumes from: one per source and filter set."""
        ...

    def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Events in order, starting right after ``resume``.

        Args:
            resume: a position this source yielded before (from the checkpoint), or ``None``.
            follow: keep going after :class:`CaughtUp` (the sidecar); else stop there.
        """
        ...

    async def aclose(self) -> None:
        """Release connections, listeners and files."""
        ...
