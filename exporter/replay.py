"""Export archived ProviderTraces (a file, not the Letta API) through the same conversion and sink.

The file is read as a :class:`~exporter.source.FileSource` (the source contract: a
:class:`Found` per trace, an :class:`Unreadable` per damaged record). There is no checkpoint
here: the file is read start to end, and spans keep the same ids every time, so exporting a file
twice is harmless (backends deduplicate). Each run's ``invoke_agent`` parent is built at the end
from what the file holds (run id, agent id, the time range of its spans), since a dump has no
Run records.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from .checkpoint import OpenRun
from .convert import (
    ConvertOptions,
    TraceContext,
    convert_run,
    convert_trace,
    needs_run_span,
    summarize_call,
)
from .models import Agent, ProviderTrace, Run
from .notes import ConversionNotes
from .shipping import ExportSummary, Shipper
from .source import CaughtUp, Event, FileSource, Found, TraceRecord, Unreadable
from .timeshift import shift_record

_logger = logging.getLogger(__name__)

__all__ = ["ReplayOptions", "export_events", "export_file", "export_traces"]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """Batching and limits for a file export."""

    batch_size: int = 512
    limit: int | None = None
    parents: bool = True
    #: Added to every time of every record (``export --shift-to-now``); None keeps them.
    shift: timedelta | None = None


async def export_traces(
    traces: Iterable[ProviderTrace | TraceRecord],
    *,
    shipper: Shipper,
    convert_options: ConvertOptions,
    resource: Resource,
    options: ReplayOptions = ReplayOptions(),
    on_progress: Callable[[ExportSummary], None] | None = None,
    summary: ExportSummary | None = None,
) -> ExportSummary:
    """Convert and ship every trace, then one parent span per run seen.

    Raises:
        Stopped: shutdown was requested while a batch was undelivered.
        UndeliveredError: the collector did not accept a batch before the deadline.
    """

    async def found() -> AsyncIterator[Event]:
        for item in traces:
            record = item if isinstance(item, TraceRecord) else TraceRecord(item)
            yield Found(
                trace=record.trace,
                step=record.step,
                metrics=record.metrics,
                run=record.run,
                agent=record.agent,
            )

    return await export_events(
        found(),
        shipper=shipper,
        convert_options=convert_options,
        resource=resource,
        options=options,
        on_progress=on_progress,
        summary=summary,
    )


async def export_events(
    events: AsyncIterator[Event],
    *,
    shipper: Shipper,
    convert_options: ConvertOptions,
    resource: Resource,
    options: ReplayOptions = ReplayOptions(),
    on_progress: Callable[[ExportSummary], None] | None = None,
    summary: ExportSummary | None = None,
    on_unreadable: Callable[[Unreadable], None] | None = None,
) -> ExportSummary:
    """Convert and ship every :class:`Found` trace until :class:`CaughtUp`, then one parent
    span per run seen; each :class:`Unreadable` goes to ``on_unreadable``.

    Raises:
        Stopped: shutdown was requested while a batch was undelivered.
        UndeliveredError: the collector did not accept a batch before the deadline.
    """
    summary = summary if summary is not None else ExportSummary()
    runs: dict[str, OpenRun] = {}
    agents: dict[str, Agent] = {}
    run_records: dict[str, Run] = {}
    batch: list[ReadableSpan] = []
    ids: list[str] = []
    notes = ConversionNotes(_logger)
    async for event in events:
        if isinstance(event, CaughtUp):
            break
        if isinstance(event, Unreadable):
            if on_unreadable is not None:
                on_unreadable(event)
            continue
        if not isinstance(event, Found):
            continue
        if options.limit is not None and summary.discovered >= options.limit:
            break
        summary.discovered += 1
        record = TraceRecord(event.trace, event.step, event.metrics, event.agent, event.run)
        if options.shift is not None:
            record = shift_record(record, options.shift)
        trace = record.trace
        context = TraceContext(
            step=record.step, metrics=record.metrics, run=record.run, agent=record.agent
        )
        span = convert_trace(trace, context, options=convert_options, resource=resource)
        if trace.agent_id and record.agent is not None:
            agents[trace.agent_id] = record.agent
        batch.append(span)
        ids.append(trace.id or trace.step_id or "")
        notes.log(span, ids[-1])
        # A call that hangs under no run span (a compaction with no agent) opens no run.
        if trace.run_id and needs_run_span(trace, context):
            run = runs.setdefault(
                trace.run_id, OpenRun(run_id=trace.run_id, agent_id=trace.agent_id)
            )
            if record.run is not None and record.run.id == trace.run_id:
                run_records[trace.run_id] = record.run
            if trace.id not in run.step_ids:
                run.summarize(summarize_call(trace, span, convert_options))
            run.add(trace.id or "", span.start_time, span.end_time)
        if len(batch) >= options.batch_size:
            await shipper.ship(batch, ids, summary)
            batch, ids = [], []
            if on_progress is not None:
                on_progress(summary)
    await shipper.ship(batch, ids, summary)
    if options.parents and runs:
        parents = [
            convert_run(
                run_records.get(run.run_id) or Run(id=run.run_id, agent_id=run.agent_id),
                agent=agents.get(run.agent_id or ""),
                first_start_ns=run.first_start_ns,
                last_end_ns=run.last_end_ns,
                step_count=len(run.step_ids),
                summary=run.summary,
                options=convert_options,
                resource=resource,
            )
            for run in runs.values()
        ]
        for start in range(0, len(parents), options.batch_size):
            chunk = parents[start : start + options.batch_size]
            await shipper.ship(
                chunk,
                [r.run_id for r in runs.values()][start : start + len(chunk)],
                summary,
                kind="run",
            )
    if on_progress is not None:
        on_progress(summary)
    return summary


async def export_file(
    path: Path | str,
    *,
    shipper: Shipper,
    convert_options: ConvertOptions,
    resource: Resource,
    options: ReplayOptions = ReplayOptions(),
    on_progress: Callable[[ExportSummary], None] | None = None,
    dead_letter: bool = True,
) -> ExportSummary:
    """Export a file of ProviderTraces; a damaged record is reported and the rest exported.

    Each record that is not a ProviderTrace is counted as invalid, named in the summary, logged
    and (unless ``dead_letter`` is false) written to the dead-letter file with the line or item
    it came from.

    Raises:
        SourceError: the file cannot be read.
        Stopped, UndeliveredError: as :func:`export_traces`.
    """
    summary = ExportSummary()

    def report(record: Unreadable) -> None:
        summary.invalid += 1
        summary.fail(record.detail)
        if dead_letter:
            shipper.dead_letter.write("invalid", error=record.detail, record_id=record.record_id)
        _logger.error(
            "%s (skipped%s)", record.detail, "; in the dead-letter file" if dead_letter else ""
        )

    source = FileSource(path)
    events = source.read(resume=None, follow=False)
    try:
        return await export_events(
            events,
            shipper=shipper,
            convert_options=convert_options,
            resource=resource,
            options=options,
            on_progress=on_progress,
            summary=summary,
            on_unreadable=report,
        )
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await source.aclose()
