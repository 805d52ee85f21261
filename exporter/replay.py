"""Export archived ProviderTraces (a file, not the Letta API) through the same conversion and sink.

There is no checkpoint here: the file is read start to end, and spans keep the same ids every
time, so exporting a file twice is harmless (backends deduplicate). Each run's ``invoke_agent``
parent is built at the end from what the file holds (run id, agent id, the time range of its
spans), since a dump has no Run records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from .checkpoint import OpenRun
from .convert import ConvertOptions, TraceContext, convert_run, convert_trace
from .models import ProviderTrace, Run
from .shipping import ExportSummary, Shipper

__all__ = ["ReplayOptions", "export_traces"]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """Batching and limits for a file export."""

    batch_size: int = 512
    limit: int | None = None
    parents: bool = True


async def export_traces(
    traces: Iterable[ProviderTrace],
    *,
    shipper: Shipper,
    convert_options: ConvertOptions,
    resource: Resource,
    options: ReplayOptions = ReplayOptions(),
    on_progress: Callable[[ExportSummary], None] | None = None,
) -> ExportSummary:
    """Convert and ship every trace, then one parent span per run seen.

    Raises:
        Stopped: shutdown was requested while a batch was undelivered.
        UndeliveredError: the collector did not accept a batch before the deadline.
        RecordInvalidError: the file holds a record that is not a ProviderTrace.
    """
    summary = ExportSummary()
    runs: dict[str, OpenRun] = {}
    batch: list[ReadableSpan] = []
    ids: list[str] = []
    context = TraceContext()
    for trace in traces:
        if options.limit is not None and summary.discovered >= options.limit:
            break
        summary.discovered += 1
        span = convert_trace(trace, context, options=convert_options, resource=resource)
        batch.append(span)
        ids.append(trace.id or trace.step_id or "")
        if trace.run_id:
            run = runs.setdefault(
                trace.run_id, OpenRun(run_id=trace.run_id, agent_id=trace.agent_id)
            )
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
                Run(id=run.run_id, agent_id=run.agent_id),
                first_start_ns=run.first_start_ns,
                last_end_ns=run.last_end_ns,
                step_count=len(run.step_ids),
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
