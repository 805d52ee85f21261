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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from opentelemetry.sdk.resources import Resource

from ._ratelimit import RateLimitedLog
from .batch import Batch, Entry, apply_delivered
from .checkpoint import Checkpoint, StreamState
from .convert import ConvertOptions
from .errors import RecordInvalidError, SourceError, SourceHTTPError, Stopped
from .intake import Intake
from .parents import ParentSpans
from .run_tracking import LocalRuns, RunContext, RunTracker
from .shipping import ExportSummary, Shipper, wait_or_stop
from .source import (
    CaughtUp,
    Event,
    Source,
    in_shard,
)
from .telemetry import DeadLetter, Metrics

__all__ = ["Worker", "WorkerOptions", "in_shard"]

_logger = logging.getLogger(__name__)

#: One-shot passes in a row that may fail without moving the cursor before the export gives up
#: (more than the passes the API source lets a step's trace fail before it reports the step as
#: unreadable and goes on, ``POISON_PASSES`` (5), and enough that a storm where most calls fail
#: but some succeed does not end the export: at 70% errors a pass gets nowhere about one time
#: in three).
_STALLED_PASSES: Final = 10
#: Seconds a one-shot export waits before reading again after a failed pass.
_RETRY_PASS_SECONDS: Final = 1.0
#: Letta answers that no retry of the pass can fix: a refused key, a forbidden route.
_REFUSED: Final = frozenset({401, 403, 407})


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
        on_accepted: awaited with each batch as soon as the collector accepted it, before the
            checkpoint is saved (the delivered-traces ledger, the delay histogram).
        after_delivery: awaited with each delivered batch once its checkpoint is saved (the
            socket source's journal trim).
        owns_run: also required of a run before this worker ships its parent span (another
            worker beside this one ships the rest), on top of the shard rule.
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
        on_accepted: Callable[[Batch], Awaitable[None]] | None = None,
        after_delivery: Callable[[Batch, StreamState], Awaitable[None]] | None = None,
        owns_run: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_accepted = on_accepted
        self._after_delivery = after_delivery
        self._also_owns = owns_run
        self._source = source
        self._shipper = shipper
        self._checkpoint = checkpoint
        self._state: StreamState = checkpoint.stream(source.stream_key())
        self._options = options
        self._metrics = metrics
        self._stop = stop
        self._local = LocalRuns() if runs is None else None
        self._runs: RunContext = runs if runs is not None else self._local  # type: ignore[assignment]
        self._tracker = RunTracker(idle_seconds=run_idle_seconds, clock=clock)
        self._intake = Intake(
            convert_options=convert_options,
            resource=resource,
            metrics=metrics,
            dead_letter=dead_letter,
            tracker=self._tracker,
            owns_run=self._owns_run,
            order=lambda: getattr(source, "order", "steps"),
            local=self._local,
        )
        self._parents = ParentSpans(
            state=self._state,
            runs=self._runs,
            tracker=self._tracker,
            shipper=shipper,
            convert_options=convert_options,
            resource=resource,
            batch_size=options.batch_size,
            save=self._save,
            beat=self._beat,
            local=self._local,
        )
        self._on_progress = on_progress
        self._clock = clock
        self._total = ExportSummary()
        self._log = RateLimitedLog(_logger)
        self._saving = asyncio.Lock()
        self._source_retries = 0
        self._shipped: Batch | None = None
        self.heartbeat = clock()
        self.passes = 0
        #: Why the last sidecar pass failed (None once one succeeds): the exit status says it.
        self.last_error: str | None = None

    @property
    def blocked(self) -> str | None:
        """Why delivery is stopped (the collector refuses the configuration), or None."""
        return self._shipper.blocked

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
        except (SourceError, RecordInvalidError):
            await self._salvage(batch, summary)
            raise
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
                    self.last_error = None
                # The source ended (stopped, or nothing more to follow): ship what it left.
                await self._end_pass(batch, summary, final=False)
            except Stopped:
                break
            except (SourceError, RecordInvalidError) as exc:
                # Letta down, or answering what it should not: nothing was lost (the checkpoint
                # holds what was delivered); what was read before the failure is shipped, so
                # the next pass starts after it even when every pass fails somewhere.
                try:
                    await self._salvage(batch, summary)
                except Stopped:
                    break
                self.last_error = str(exc)
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
        await self._pass_until_through()
        while self._state.pending and not self._stop.is_set():
            await self._sleep(min(poll_seconds, self._next_settle()))
            if self._stop.is_set():
                break
            await self._pass_until_through()
        if not self._stop.is_set():
            final = ExportSummary()
            await self._parents.ship_finished(final, final=True)
            self._total.add(final)
        self._total.pending = len(self._state.pending)
        return self._total

    async def _pass_until_through(self) -> None:
        """One-shot: a pass, read again from the checkpoint after a failure while passes move
        the cursor, so an export against a flaky Letta keeps going while calls succeed.

        Raises:
            SourceError: Letta refused the key, the source's configuration is wrong (a
                database login refused, a missing table), or several passes in a row failed without
                moving the cursor (the message says how far the export got).
        """
        stalled = 0
        while True:
            cursor = self._state.cursor
            try:
                await self.run_pass()
                return
            except (SourceError, RecordInvalidError) as exc:
                if isinstance(exc, SourceHTTPError) and exc.status_code in _REFUSED:
                    raise
                if getattr(exc, "configuration", False):
                    raise  # a setting must change (the database refused the login): exit 2
                stalled = 0 if self._state.cursor != cursor else stalled + 1
                if stalled >= _STALLED_PASSES or self._stop.is_set():
                    total = self._total
                    raise SourceError(
                        f"{exc} (gave up after {stalled} passes in a row that got no further; "
                        f"{total.exported} traces delivered, {total.invalid} reported unreadable)"
                    ) from exc
                self._log.warning(
                    "pass",
                    "pass failed (%s); reading again from the checkpoint (%d traces delivered "
                    "so far)",
                    exc,
                    self._total.exported,
                )
                await self._sleep(_RETRY_PASS_SECONDS)
                if self._stop.is_set():
                    raise Stopped from exc

    # ------------------------------------------------------------------ one event
    async def _take(self, event: Event, batch: Batch, summary: ExportSummary) -> Batch:
        """Handle one event into the batch; ship the batch when it is full."""
        self._intake.handle(event, batch, summary)
        if len(batch.spans) >= self._options.batch_size:
            await self._ship(batch, summary)
            batch = Batch()
        self.heartbeat = self._clock()
        return batch

    # ------------------------------------------------------------------ shipping
    def _beat(self) -> None:
        self.heartbeat = self._clock()

    async def _ship(self, batch: Batch, summary: ExportSummary) -> None:
        """Deliver a batch, then record it and save the checkpoint."""
        if batch.empty:
            return
        hook = self._on_accepted

        async def accepted() -> None:
            if hook is not None:
                await hook(batch)

        await self._shipper.ship(
            batch.spans, batch.trace_ids(), summary, on_wait=self._beat, on_accepted=accepted
        )

        def missing(entry: Entry) -> None:
            self._intake.report_missing(entry, summary)

        apply_delivered(batch, self._state, owns_run=self._owns_run, on_missing=missing)
        self._shipped = batch
        await self._save()
        if self._after_delivery is not None:
            await self._after_delivery(batch, self._state)
        if batch.spans and (last := batch.spans[-1].end_time):
            self._metrics.lag_seconds.set(max(0.0, self._clock() - last / 1e9))
        if self._on_progress is not None:
            self._on_progress(summary)
        await self._parents.ship_due(summary)

    async def _salvage(self, batch: Batch, summary: ExportSummary) -> None:
        """After a failed read: ship what was read before the failure (complete and in order)
        unless it was shipped already, so the checkpoint moves past it."""
        if batch is not self._shipped:
            await self._ship(batch, summary)

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
        return in_shard(run_id, self._options.shard) and (
            self._also_owns is None or self._also_owns(run_id)
        )

    async def _end_pass(self, batch: Batch, summary: ExportSummary, *, final: bool) -> None:
        await self._ship(batch, summary)
        await self._parents.ship_finished(summary, final=final)

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
