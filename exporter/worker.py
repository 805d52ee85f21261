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

The parts: :class:`~exporter.intake.Intake` takes each event into the batch,
:class:`~exporter.batch_delivery.BatchDelivery` ships a batch and saves the checkpoint,
:class:`~exporter.parents.ParentSpans` ships the runs' parents, and
:class:`~exporter.one_shot.OneShotExport` drives the one-shot job's passes; the worker holds
the sidecar's loop and one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource

from ._ratelimit import RateLimitedLog
from .batch import Batch
from .batch_delivery import BatchDelivery, CheckpointSaver
from .checkpoint import Checkpoint, StreamState
from .convert import ConvertOptions
from .errors import RecordInvalidError, SourceError, Stopped
from .intake import Intake
from .one_shot import OneShotExport
from .parents import ParentSpans
from .pass_counts import PassCounts
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


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs; built from Settings by the wiring."""

    batch_size: int = 512
    concurrency: int = 8
    trace_settle_seconds: float = 300.0
    limit: int | None = None
    shard: tuple[int, int] | None = None
    #: On shutdown, read the source to its end rather than stop after the event in hand: for
    #: a socket journal, which the sidecar's drain ends once what it holds is read.
    drain_on_stop: bool = False


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
        self._also_owns = owns_run
        self._source = source
        self._shipper = shipper
        self._state: StreamState = checkpoint.stream(source.stream_key())
        self._options = options
        self._metrics = metrics
        self._stop = stop
        local = LocalRuns() if runs is None else None
        self._tracker = RunTracker(idle_seconds=run_idle_seconds, clock=clock)
        self._intake = Intake(
            convert_options=convert_options,
            resource=resource,
            metrics=metrics,
            dead_letter=dead_letter,
            tracker=self._tracker,
            owns_run=self._owns_run,
            order=lambda: getattr(source, "order", "steps"),
            local=local,
        )
        saver = CheckpointSaver(checkpoint)
        parents = ParentSpans(
            state=self._state,
            runs=runs if runs is not None else local,  # type: ignore[arg-type]
            tracker=self._tracker,
            shipper=shipper,
            convert_options=convert_options,
            resource=resource,
            batch_size=options.batch_size,
            save=saver.save,
            beat=self._beat,
            local=local,
        )
        self._delivery = BatchDelivery(
            shipper=shipper,
            state=self._state,
            saver=saver,
            intake=self._intake,
            parents=parents,
            owns_run=self._owns_run,
            metrics=metrics,
            beat=self._beat,
            clock=clock,
            on_accepted=on_accepted,
            after_delivery=after_delivery,
            on_progress=on_progress,
        )
        self._clock = clock
        self._total = ExportSummary()
        self._one_shot = OneShotExport(
            run_pass=self._one_pass,
            state=self._state,
            parents=parents,
            total=self._total,
            stop=stop,
            settle_seconds=options.trace_settle_seconds,
            clock=clock,
            sleep=self._sleep,
        )
        self._counts = PassCounts(
            source=source, state=self._state, metrics=metrics, total=self._total
        )
        self._log = RateLimitedLog(_logger)
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
            async with _reading(
                self._source.read(resume=self._state.cursor, follow=False)
            ) as events:
                async for event in events:
                    if isinstance(event, CaughtUp):
                        break
                    batch = await self._take(event, batch, summary)
                    if self._stop.is_set() and not self._options.drain_on_stop:
                        # Shutdown mid-backlog: deliver what was read, save, and stop; the
                        # next run resumes right after it.
                        await self._delivery.ship(batch, summary)
                        raise Stopped
            await self._delivery.end_pass(batch, summary, final=final)
        except (SourceError, RecordInvalidError):
            await self._delivery.salvage(batch, summary)
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
                async with _reading(
                    self._source.read(resume=self._state.cursor, follow=True)
                ) as events:
                    async for event in events:
                        if not isinstance(event, CaughtUp):
                            batch = await self._take(event, batch, summary)
                            if self._stop.is_set() and not self._options.drain_on_stop:
                                break  # shutdown mid-backlog: what was read is shipped below
                            continue
                        ended, held = summary, batch
                        summary, batch = ExportSummary(), Batch()
                        try:
                            await self._delivery.end_pass(held, ended, final=False)
                        finally:
                            self._count_pass(ended)
                        self._passed()
                        self._tracker.new_pass()
                        self.last_error = None
                # The source ended (stopped, or nothing more to follow): ship what it left.
                await self._delivery.end_pass(batch, summary, final=False)
            except Stopped:
                break
            except (SourceError, RecordInvalidError) as exc:
                # Letta down, or answering what it should not: nothing was lost (the checkpoint
                # holds what was delivered); what was read before the failure is shipped, so
                # the next pass starts after it even when every pass fails somewhere.
                try:
                    await self._delivery.salvage(batch, summary)
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
        return await self._one_shot.export_window(poll_seconds=poll_seconds)

    async def _one_pass(self) -> ExportSummary:
        return await self.run_pass()

    # ------------------------------------------------------------------ one event
    async def _take(self, event: Event, batch: Batch, summary: ExportSummary) -> Batch:
        """Handle one event into the batch; ship the batch when it is full."""
        self._intake.handle(event, batch, summary)
        if len(batch.spans) >= self._options.batch_size:
            await self._delivery.ship(batch, summary)
            batch = Batch()
        self.heartbeat = self._clock()
        return batch

    def _beat(self) -> None:
        self.heartbeat = self._clock()

    def _owns_run(self, run_id: str) -> bool:
        """Whether this shard ships the run's parent span (one shard per run, whichever shards
        export its steps), so sharded replicas never send a run span twice."""
        return in_shard(run_id, self._options.shard) and (
            self._also_owns is None or self._also_owns(run_id)
        )

    # ------------------------------------------------------------------ bookkeeping
    def _count_pass(self, summary: ExportSummary) -> None:
        self._counts.count(summary)

    def _passed(self) -> None:
        self.passes += 1
        self.heartbeat = self._clock()
        self._counts.passed(self.heartbeat)

    async def _sleep(self, seconds: float) -> None:
        await wait_or_stop(self._stop, seconds)


@contextlib.asynccontextmanager
async def _reading(events: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    """A source's read, closed when the loop over it ends (a stop, a failure): the source's
    own clean-up (a query in flight, a file) runs then, not whenever the generator is
    collected."""
    try:
        yield events
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
