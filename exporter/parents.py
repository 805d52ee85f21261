"""Shipping runs' ``invoke_agent`` parent spans once :class:`~exporter.run_tracking.RunTracker`
says they are due: mid-pass, at the end of a pass, and every open run at the end of an export.

A run leaves the stream's ``open_runs`` only once its parent span was delivered, so a crash
before that ships it again on the next start (same ids: backends deduplicate).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from .checkpoint import OpenRun, StreamState
from .convert import ConvertOptions, convert_run
from .models import Run
from .run_tracking import LocalRuns, RunContext, RunTracker, waiting_runs
from .shipping import ExportSummary, Shipper

__all__ = ["ParentSpans"]


class ParentSpans:
    """Builds and ships the parent spans of the runs that are over.

    Args:
        state: the stream state (its open runs and pending steps).
        runs: where runs and agents come from.
        tracker: which runs are due.
        shipper: delivers the spans.
        convert_options, resource: for :func:`~exporter.convert.convert_run`.
        batch_size: spans per request at most.
        save: saves the checkpoint (after the shipped runs left ``open_runs``).
        beat: the worker's heartbeat, while a delivery is retried.
        local: the runs events carried, for a source without an API (else None).
    """

    def __init__(
        self,
        *,
        state: StreamState,
        runs: RunContext,
        tracker: RunTracker,
        shipper: Shipper,
        convert_options: ConvertOptions,
        resource: Resource,
        batch_size: int,
        save: Callable[[], Awaitable[None]],
        beat: Callable[[], None],
        local: LocalRuns | None,
    ) -> None:
        self._state = state
        self._runs = runs
        self._tracker = tracker
        self._shipper = shipper
        self._convert = convert_options
        self._resource = resource
        self._batch_size = batch_size
        self._save = save
        self._beat = beat
        self._local = local

    async def ship_due(self, summary: ExportSummary) -> None:
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

    async def ship_finished(self, summary: ExportSummary, *, final: bool) -> None:
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
            if len(spans) >= self._batch_size:
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
            summary=open_run.summary,
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
