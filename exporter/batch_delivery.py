"""Shipping one batch and saving the checkpoint after it, for both loops of the worker.

    ship (the Shipper) -> on_accepted -> apply_delivered -> save off the event loop
        -> after_delivery -> lag gauge, progress -> parent spans now due

Only once a batch is delivered (or reported) is it applied to the stream's state and the
checkpoint saved: the cursor never passes an undelivered span. The save runs in a thread (a
lock and two fsyncs), one at a time, and the loop waits for it before it changes the state
again, so the saved state is the one of the batch just delivered and saves land in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .batch import Batch, Entry, apply_delivered
from .checkpoint import Checkpoint, StreamState
from .intake import Intake
from .parents import ParentSpans
from .shipping import Shipper
from .summary import ExportSummary
from .telemetry import Metrics

__all__ = ["BatchDelivery", "CheckpointSaver"]


class CheckpointSaver:
    """Saves a checkpoint off the event loop, one save at a time."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint
        self._saving = asyncio.Lock()

    async def save(self) -> None:
        """Save the checkpoint in a thread; a save asked for during another waits for it."""
        async with self._saving:
            await asyncio.to_thread(self._checkpoint.save)


class BatchDelivery:
    """Delivers a batch, applies it to the stream state and saves the checkpoint.

    Args:
        shipper: delivers the spans.
        state: the stream state the delivered batch is applied to.
        saver: saves the checkpoint.
        intake: reports the steps still missing once their batch is through.
        parents: ships the parent spans due after each batch.
        owns_run: whether this worker ships a run's parent span.
        metrics: the lag gauge.
        beat: the worker's heartbeat, while a delivery is retried.
        clock: Unix seconds.
        on_accepted: awaited with the batch once the collector accepted it, before the save.
        after_delivery: awaited with the batch and the state once the checkpoint is saved.
        on_progress: called with the running summary after each batch.
    """

    def __init__(
        self,
        *,
        shipper: Shipper,
        state: StreamState,
        saver: CheckpointSaver,
        intake: Intake,
        parents: ParentSpans,
        owns_run: Callable[[str], bool],
        metrics: Metrics,
        beat: Callable[[], None],
        clock: Callable[[], float],
        on_accepted: Callable[[Batch], Awaitable[None]] | None,
        after_delivery: Callable[[Batch, StreamState], Awaitable[None]] | None,
        on_progress: Callable[[ExportSummary], None] | None,
    ) -> None:
        self._shipper = shipper
        self._state = state
        self._saver = saver
        self._intake = intake
        self._parents = parents
        self._owns_run = owns_run
        self._metrics = metrics
        self._beat = beat
        self._clock = clock
        self._on_accepted = on_accepted
        self._after_delivery = after_delivery
        self._on_progress = on_progress
        self._shipped: Batch | None = None

    async def ship(self, batch: Batch, summary: ExportSummary) -> None:
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
        await self._saver.save()
        if self._after_delivery is not None:
            await self._after_delivery(batch, self._state)
        if batch.spans and (last := batch.spans[-1].end_time):
            self._metrics.lag_seconds.set(max(0.0, self._clock() - last / 1e9))
        if self._on_progress is not None:
            self._on_progress(summary)
        await self._parents.ship_due(summary)

    async def salvage(self, batch: Batch, summary: ExportSummary) -> None:
        """After a failed read: ship what was read before the failure (complete and in order)
        unless it was shipped already, so the checkpoint moves past it."""
        if batch is not self._shipped:
            await self.ship(batch, summary)

    async def end_pass(self, batch: Batch, summary: ExportSummary, *, final: bool) -> None:
        """The end of a pass: what the batch holds, then the parents of the runs now over."""
        await self.ship(batch, summary)
        await self._parents.ship_finished(summary, final=final)
