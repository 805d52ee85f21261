"""One source event into the batch: a span converted, or a record kept, reported or passed.

Why apart from the loop: this is where the contract's events meet the checkpoint's vocabulary
(what a delivered batch must record, see :mod:`exporter.batch`) and where unreadable and missing
records are reported (log line, metric, dead-letter line), the same way for every source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from opentelemetry.sdk.resources import Resource

from .batch import Batch, Entry, Kind
from .checkpoint import PendingStep
from .convert import ConvertOptions, TraceContext, convert_trace, needs_run_span, summarize_call
from .notes import ConversionNotes
from .run_tracking import LocalRuns, RunTracker
from .shipping import ExportSummary
from .source import Awaiting, CaughtUp, Event, Found, Missing, Skipped, Unreadable
from .telemetry import DeadLetter, Metrics

__all__ = ["Intake"]

_logger = logging.getLogger(__name__)


class Intake:
    """Handles events into batches and reports what cannot be delivered.

    Args:
        convert_options, resource: for :func:`~exporter.convert.convert_trace`.
        metrics, dead_letter: where reports go.
        tracker: told how far the source got and which runs had steps.
        owns_run: whether this shard ships the run's parent span.
        order: how the source orders records (``steps`` or ``runs``), read per event.
        local: the runs and agents events carry, for a source without an API (else None).
    """

    def __init__(
        self,
        *,
        convert_options: ConvertOptions,
        resource: Resource,
        metrics: Metrics,
        dead_letter: DeadLetter,
        tracker: RunTracker,
        owns_run: Callable[[str], bool],
        order: Callable[[], str],
        local: LocalRuns | None,
    ) -> None:
        self._convert = convert_options
        self._resource = resource
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._tracker = tracker
        self._owns_run = owns_run
        self._order = order
        self._local = local
        self._notes = ConversionNotes(_logger)

    def handle(self, event: Event, batch: Batch, summary: ExportSummary) -> None:
        """Put one event into ``batch`` (counting it in ``summary``)."""
        if isinstance(event, CaughtUp):
            return
        if event.position is not None:
            batch.last_position = event.position
            run = event.run if isinstance(event, Found | Missing | Awaiting) else None
            self._tracker.advance(event.step, run, order=self._order())
        if isinstance(event, Skipped):
            self._skipped(event, batch, summary)
            return
        if event.fresh:
            summary.discovered += 1
        if isinstance(event, Found):
            self._found(event, batch)
        elif isinstance(event, Awaiting):
            pending = PendingStep(
                step_id=event.step_id,
                run_id=event.run_id,
                first_seen=event.first_seen,
                attempts=event.attempts,
            )
            batch.entries.append(
                Entry(event.step_id, Kind.AWAITING, event.run_id, event.agent_id, pending=pending)
            )
        elif isinstance(event, Missing):
            batch.entries.append(Entry(event.step_id, Kind.MISSING, event.run_id, event.agent_id))
        else:
            self._unreadable(event, batch, summary)

    def _skipped(self, event: Skipped, batch: Batch, summary: ExportSummary) -> None:
        step = event.step
        if event.seen:
            # Delivered already (by this worker before, or by the socket's): no longer pending.
            batch.entries.append(Entry(event.step_id, Kind.ELSEWHERE))
        else:
            summary.skipped_shard += 1
        if step is not None and step.run_id and not event.seen and self._owns_run(step.run_id):
            batch.entries.append(Entry(event.step_id, Kind.FOREIGN, step.run_id, step.agent_id))

    def _found(self, event: Found, batch: Batch) -> None:
        trace, step = event.trace, event.step
        if self._local is not None:
            self._local.remember(event.run, event.agent)
        context = TraceContext(step=step, metrics=event.metrics, run=event.run, agent=event.agent)
        span = convert_trace(trace, context, options=self._convert, resource=self._resource)
        step_id = (step.id if step else None) or trace.step_id or trace.id or ""
        self._notes.log(span, trace.id or step_id)
        # A call that hangs under no run span (a compaction with no agent) opens no run.
        run_id = trace.run_id or (step.run_id if step else None)
        if run_id and not needs_run_span(trace, context):
            run_id = None
        if run_id:
            self._tracker.seen(run_id)
        batch.entries.append(
            Entry(
                step_id,
                Kind.SPAN,
                run_id,
                trace.agent_id or (step.agent_id if step else None),
                span_index=len(batch.spans),
                trace_id=trace.id,
                summary=(
                    summarize_call(trace, span, self._convert)
                    if run_id and self._owns_run(run_id)  # only the run's shard ships its span
                    else None
                ),
            )
        )
        batch.spans.append(span)

    def _unreadable(self, event: Unreadable, batch: Batch, summary: ExportSummary) -> None:
        step = event.step
        name = event.record_id or "<no id>"
        summary.invalid += 1
        summary.fail(f"{name}: {event.detail}")
        self._metrics.traces_failed.labels(reason=event.reason).inc()
        fields: dict[str, object] = {f"{event.record_kind}_id": event.record_id}
        fields["error"] = event.detail
        if event.raw is not None:
            fields["raw"] = event.raw.decode("utf-8", "replace")
        self._dead_letter.write(event.reason, **fields)
        _logger.error("step %s: %s (written to the dead-letter file)", name, event.detail)
        if event.record_id is not None:
            batch.entries.append(
                Entry(
                    event.record_id,
                    Kind.REPORTED,
                    step.run_id if step else None,
                    step.agent_id if step else None,
                )
            )

    def report_missing(self, entry: Entry, summary: ExportSummary) -> None:
        """A step reported missing, once its batch was delivered."""
        summary.missing += 1
        self._metrics.traces_missing.inc()
        self._dead_letter.write("no_trace", step_id=entry.step_id, run_id=entry.run_id)
        _logger.warning(
            "step %s has no trace after the settle time (tracking off, or the call failed "
            "before a trace was written); recorded in the dead-letter file",
            entry.step_id,
        )
