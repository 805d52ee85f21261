"""The loop, for the sidecar and the one-shot job alike, over any source.

    source.read() -> convert -> batch -> ship -> checkpoint -> run parent spans

The worker reads a :class:`~exporter.source.Source`'s events in order, converts each found trace
into a span, and ships spans in batches through the :class:`~exporter.shipping.Shipper` it is
given (the one retry layer of the collector hop). Only once a batch is delivered (or reported)
is it applied to the stream's state (:func:`~exporter.batch.apply_delivered`) and the
checkpoint saved, off the event loop: the cursor never passes an undelivered span. What can
never be delivered (an unreadable record, a batch the collector refuses for good, a trace still
missing after the settle time) is written to the dead-letter file, counted and logged.

A run's ``invoke_agent`` parent span is shipped when :class:`~exporter.run_tracking.RunTracker`
says it is due: mid-pass for finished runs the source has gone past, at the end of a pass, and
for every open run at the end of a one-shot export.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from ._ratelimit import RateLimitedLog
from .batch import Batch, Entry, Kind, apply_delivered
from .checkpoint import Checkpoint, OpenRun, PendingStep, StreamState
from .convert import ConvertOptions, TraceContext, convert_run, convert_trace
from .errors import RecordInvalidError, SourceError, Stopped
from .models import Run
from .run_tracking import LocalRuns, RunContext, RunTracker, waiting_runs
from .shipping import ExportSummary, Shipper, wait_or_stop
from .source import (
    Awaiting,
    CaughtUp,
    Event,
    Found,
    Missing,
    Skipped,
    Source,
    Unreadable,
    in_shard,
)
from .telemetry import DeadLetter, Metrics

__all__ = ["Worker", "WorkerOptions", "in_shard"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs; built from Settings by the wiring."""

    batch_size: int = 512
    concurrency: int = 8
    trace_settle_seconds: float = 300.0
    limit: int | None = None
    shard: tuple[int, int] | None = None


class Worker:
    """Drives one source into one checkpoint stream.

    Args:
        source: what to read (its ``stream_key()`` selects the checkpoint stream).
        shipper: delivers batches (the one retry layer of the collector hop).
        checkpoint: the state file.
        convert_options: content policy and id options.
        resource: the OTel resource of every span.
        options: batching and shard options.
        metrics: where counts go.
        dead_letter: where unreadable and missing records go.
        stop: set to stop; waits end on it.
        runs: where runs and agents for parent spans come from (default: what the events carry).
        run_idle_seconds: the idle rule for runs without a status (None: off).
        on_progress: called with the running summary after each batch (progress bars).
        clock: Unix seconds (tests pass a fake).
    """

    def __init__(
        self,
        *,
        source: Source,
        shipper: Shipper,
        checkpoint: Checkpoint,
        convert_options: ConvertOptions,
        resource: Resource,
        options: WorkerOptions,
        metrics: Metrics,
        dead_letter: DeadLetter,
        stop: asyncio.Event,
        runs: RunContext | None = None,
        run_idle_seconds: float | None = None,
        on_progress: Callable[[ExportSummary], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._shipper = shipper
        self._checkpoint = checkpoint
        self._state: StreamState = checkpoint.stream(source.stream_key())
        self._convert = convert_options
        self._resource = resource
        self._options = options
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._stop = stop
        self._local = LocalRuns() if runs is None else None
        self._runs: RunContext = runs if runs is not None else self._local  # type: ignore[assignment]
        self._tracker = RunTracker(idle_seconds=run_idle_seconds, clock=clock)
        self._on_progress = on_progress
        self._clock = clock
        self._total = ExportSummary()
        self._log = RateLimitedLog(_logger)
        self._saving = asyncio.Lock()
        self._source_retries = 0
        self.heartbeat = clock()
        self.passes = 0

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def total(self) -> ExportSummary:
        """Everything done since this worker was made."""
        return self._total

    # ------------------------------------------------------------------ the two modes
    async def run_pass(self, *, final: bool = False) -> ExportSummary:
        """Read the source until it is caught up, once.

        Args:
            final: the end of a one-shot window: ship the parents of runs still going too.

        Raises:
            Stopped: shutdown was requested while a batch was undelivered.
            UndeliveredError: (one-shot) the collector did not accept a batch in time.
            SourceError: the source failed; the checkpoint holds what was delivered.
        """
        summary = ExportSummary()
        self._tracker.new_pass()
        batch = Batch()
        try:
            async for event in self._source.read(resume=self._state.cursor, follow=False):
                if isinstance(event, CaughtUp):
                    break
                batch = await self._take(event, batch, summary)
            await self._end_pass(batch, summary, final=final)
        finally:
            self._count_pass(summary)
        self._passed()
        return summary

    async def run_forever(self, *, poll_seconds: float) -> None:
        """The sidecar: follow the source until ``stop`` is set.

        The source waits between rounds itself (a poll, new journal entries). A read that fails
        (after the source's retries) is logged and started again, after ``poll_seconds``, from
        the checkpoint, which holds what was delivered.
        """
        while not self._stop.is_set():
            summary = ExportSummary()
            self._tracker.new_pass()
            batch = Batch()
            try:
                async for event in self._source.read(resume=self._state.cursor, follow=True):
                    if not isinstance(event, CaughtUp):
                        batch = await self._take(event, batch, summary)
                        continue
                    ended, held = summary, batch
                    summary, batch = ExportSummary(), Batch()
                    try:
                        await self._end_pass(held, ended, final=False)
                    finally:
                        self._count_pass(ended)
                    self._passed()
                    self._tracker.new_pass()
            except Stopped:
                break
            except (SourceError, RecordInvalidError) as exc:
                # Letta down, or answering what it should not: nothing was lost (the checkpoint
                # holds what was delivered); the next poll tries again.
                self._log.warning("source", "pass failed, trying again next poll: %s", exc)
                self.heartbeat = self._clock()
                await self._sleep(poll_seconds)
            else:
                if not self._stop.is_set():  # a source that ended: read it again later
                    await self._sleep(poll_seconds)
            finally:
                self._count_pass(summary)

    async def export_window(self, *, poll_seconds: float = 5.0) -> ExportSummary:
        """The one-shot job: export everything, wait for traces not written yet (up to the
        settle time), then ship the parents of every run touched, finished or not.

        Raises:
            Stopped: shutdown was requested while a batch was undelivered.
            UndeliveredError: the collector did not accept a batch before the deadline.
            SourceError: the source failed.
        """
        await self.run_pass()
        while self._state.pending and not self._stop.is_set():
            await self._sleep(min(poll_seconds, self._next_settle()))
            if self._stop.is_set():
                break
            await self.run_pass()
        if not self._stop.is_set():
            final = ExportSummary()
            await self._ship_finished_runs(final, final=True)
            self._total.add(final)
        self._total.pending = len(self._state.pending)
        return self._total

    # ------------------------------------------------------------------ one event
    async def _take(self, event: Event, batch: Batch, summary: ExportSummary) -> Batch:
        """Handle one event into the batch; ship the batch when it is full."""
        self._handle(event, batch, summary)
        if len(batch.spans) >= self._options.batch_size:
            await self._ship(batch, summary)
            batch = Batch()
        self.heartbeat = self._clock()
        return batch

    def _handle(self, event: Event, batch: Batch, summary: ExportSummary) -> None:
        if isinstance(event, CaughtUp):
            return
        if event.position is not None:
            batch.last_position = event.position
            run = event.run if isinstance(event, Found | Missing | Awaiting) else None
            self._tracker.advance(event.step, run, order=getattr(self._source, "order", "steps"))
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
        if not event.seen:
            summary.skipped_shard += 1
        if step is not None and step.run_id and not event.seen and self._owns_run(step.run_id):
            batch.entries.append(Entry(event.step_id, Kind.FOREIGN, step.run_id, step.agent_id))

    def _found(self, event: Found, batch: Batch) -> None:
        trace, step = event.trace, event.step
        if self._local is not None:
            self._local.remember(event.run, event.agent)
        context = TraceContext(step=step, metrics=event.metrics, run=event.run, agent=event.agent)
        span = convert_trace(trace, context, options=self._convert, resource=self._resource)
        run_id = trace.run_id or (step.run_id if step else None)
        if run_id:
            self._tracker.seen(run_id)
        batch.entries.append(
            Entry(
                (step.id if step else None) or trace.step_id or trace.id or "",
                Kind.SPAN,
                run_id,
                trace.agent_id or (step.agent_id if step else None),
                span_index=len(batch.spans),
                trace_id=trace.id,
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

    # ------------------------------------------------------------------ shipping
    def _beat(self) -> None:
        self.heartbeat = self._clock()

    async def _ship(self, batch: Batch, summary: ExportSummary) -> None:
        """Deliver a batch, then record it and save the checkpoint."""
        if batch.empty:
            return
        await self._shipper.ship(batch.spans, batch.trace_ids(), summary, on_wait=self._beat)

        def missing(entry: Entry) -> None:
            self._report_missing(entry, summary)

        apply_delivered(batch, self._state, owns_run=self._owns_run, on_missing=missing)
        await self._save()
        if batch.spans and (last := batch.spans[-1].end_time):
            self._metrics.lag_seconds.set(max(0.0, self._clock() - last / 1e9))
        if self._on_progress is not None:
            self._on_progress(summary)
        await self._ship_due_runs(summary)

    def _report_missing(self, entry: Entry, summary: ExportSummary) -> None:
        summary.missing += 1
        self._metrics.traces_missing.inc()
        self._dead_letter.write("no_trace", step_id=entry.step_id, run_id=entry.run_id)
        _logger.warning(
            "step %s has no trace after the settle time (tracking off, or the call failed "
            "before a trace was written); recorded in the dead-letter file",
            entry.step_id,
        )

    async def _save(self) -> None:
        """Save the checkpoint off the event loop (a lock and two fsyncs), one save at a time.

        The loop waits for the save before it changes the state again, so the saved state is
        the one of the batch just delivered, and saves land in order.
        """
        async with self._saving:
            await asyncio.to_thread(self._checkpoint.save)

    def _owns_run(self, run_id: str) -> bool:
        """Whether this shard ships the run's parent span (one shard per run, whichever shards
        export its steps), so sharded replicas never send a run span twice."""
        return in_shard(run_id, self._options.shard)

    async def _ship_due_runs(self, summary: ExportSummary) -> None:
        """Ship, mid-pass, the parents of runs that are over.

        Without this every run of a long backlog stays open until the end of the pass: memory
        and the checkpoint (rewritten after every batch) would grow with the backlog.
        """
        state = self._state
        if not state.open_runs:
            return
        ready = self._tracker.due_now(
            state.open_runs.values(), state.pending, self._runs.cached_run
        )
        spans: list[ReadableSpan] = []
        done: list[str] = []
        for open_run, run in ready:
            spans.append(await self._run_span(open_run, run))
            done.append(open_run.run_id)
        await self._ship_runs(spans, done, summary)

    async def _end_pass(self, batch: Batch, summary: ExportSummary, *, final: bool) -> None:
        await self._ship(batch, summary)
        await self._ship_finished_runs(summary, final=final)

    async def _ship_finished_runs(self, summary: ExportSummary, *, final: bool) -> None:
        """Ship the invoke_agent span of every run that can get no more spans."""
        state = self._state
        waiting = waiting_runs(state.pending)
        spans: list[ReadableSpan] = []
        done: list[str] = []
        for open_run in list(state.open_runs.values()):
            run = await self._runs.run(open_run.run_id)
            if not self._tracker.due_at_end(open_run, run, waiting, final=final):
                continue
            spans.append(await self._run_span(open_run, run))
            done.append(open_run.run_id)
            if len(spans) >= self._options.batch_size:
                await self._ship_runs(spans, done, summary)
                spans, done = [], []
        await self._ship_runs(spans, done, summary)

    async def _run_span(self, open_run: OpenRun, run: Run) -> ReadableSpan:
        agent = await self._runs.agent(run.agent_id or open_run.agent_id or "")
        if self._local is not None and run.agent_id is None and open_run.agent_id is not None:
            # A source without run records: the run is known by what its steps named.
            run = run.model_copy(update={"agent_id": open_run.agent_id})
        return convert_run(
            run,
            agent=agent,
            first_start_ns=open_run.first_start_ns,
            last_end_ns=open_run.last_end_ns,
            step_count=len(open_run.step_ids),
            options=self._convert,
            resource=self._resource,
        )

    async def _ship_runs(
        self, spans: list[ReadableSpan], run_ids: list[str], summary: ExportSummary
    ) -> None:
        if not spans:
            return
        await self._shipper.ship(spans, run_ids, summary, kind="run", on_wait=self._beat)
        for run_id in run_ids:
            self._state.open_runs.pop(run_id, None)
            self._tracker.closed(run_id)
            if self._local is not None:
                self._local.forget(run_id)
        await self._save()

    # ------------------------------------------------------------------ bookkeeping
    def _count_pass(self, summary: ExportSummary) -> None:
        """Fold a pass (finished or not) into the totals and the gauges."""
        self._count_source_retries()
        summary.pending = len(self._state.pending)
        self._metrics.pending_traces.set(len(self._state.pending))
        self._metrics.open_runs.set(len(self._state.open_runs))
        self._total.add(summary)

    def _passed(self) -> None:
        self.passes += 1
        self.heartbeat = self._clock()
        self._metrics.last_pass.set(self.heartbeat)
        self._metrics.lag_seconds.set(0)

    def _count_source_retries(self) -> None:
        stats = getattr(self._source, "stats", None)
        retries = int(getattr(stats, "retries", 0))
        if retries > self._source_retries:
            self._metrics.retries.labels(hop="letta").inc(retries - self._source_retries)
            self._source_retries = retries

    def _next_settle(self) -> float:
        now = self._clock()
        settle = self._options.trace_settle_seconds
        waits = [p.first_seen + settle - now for p in self._state.pending.values()]
        return max(0.05, min(waits, default=0.05))

    async def _sleep(self, seconds: float) -> None:
        await wait_or_stop(self._stop, seconds)
