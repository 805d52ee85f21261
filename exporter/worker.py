"""The pipeline, for the sidecar and the one-shot job alike.

    discover steps -> fetch traces (bounded concurrency) -> convert -> batch -> ship -> checkpoint

One pass walks everything new since the checkpoint, in discovery order:

1. steps whose trace was ``null`` last time (``pending``) are asked again;
2. in runs discovery, runs still going (``open_runs``) are asked for steps added since;
3. discovery continues after the saved cursor.

Fetches run ahead of the in-order consumer in a bounded window, so memory stays flat however
long the backlog. Spans are shipped in batches; the checkpoint (cursor, pending steps, open runs)
is saved only after the collector accepted a batch. A failed export is re-sent with backoff (the
one retry layer for this hop), forever in the sidecar and until a deadline in the one-shot job; the
cursor never passes an undelivered span. What can never be delivered (an invalid record, a batch
the collector refuses for good, a trace still missing after the settle time) is written to the
dead-letter file, counted and logged: nothing is dropped silently.

A run's ``invoke_agent`` parent span is shipped once the run is finished (or at the end of a
one-shot export window).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from .checkpoint import Checkpoint, OpenRun, PendingStep, StreamState
from .convert import ConvertOptions, TraceContext, convert_run, convert_trace
from .errors import RecordInvalidError, SourceError, SourceHTTPError
from .models import Agent, ProviderTrace, Run, Step, StepMetrics
from .shipping import ExportSummary, RateLimitedLog, Shipper, Stopped, wait_or_stop
from .source import LettaClient, RunLookup, StepFilter
from .telemetry import DeadLetter, Metrics

__all__ = ["Worker", "WorkerOptions", "in_shard"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Runs remembered within a pass (looked up by each of their steps, then for the parent span).
_RUN_CACHE_SIZE: Final = 4096
#: Discovery must be this far past a finished run's completion before its parent span is shipped
#: mid-pass (steps are created before their run completes; the margin absorbs clock skew).
_RUN_PASSED_MARGIN: Final = timedelta(seconds=5)

#: Passes in a row that may stop on the same step's trace (HTTP 5xx after retries) before that
#: step is reported as unreadable and skipped.
_POISON_PASSES: Final = 3


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs; built from Settings by the CLI."""

    batch_size: int = 512
    concurrency: int = 8
    trace_settle_seconds: float = 300.0
    #: None: retry a failing export forever (sidecar); else give up after this many seconds.
    export_deadline_seconds: float | None = None
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    limit: int | None = None
    dry_run: bool = False
    shard: tuple[int, int] | None = None


class _Source(Protocol):
    """What the worker needs from the Letta client (a narrow seam for tests)."""

    async def discovery_mode(self) -> str: ...
    def discover(self, filt: StepFilter, *, resume: str | None = None) -> AsyncIterator[Any]: ...
    def list_run_steps(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]: ...
    async def get_trace(self, step_id: str) -> ProviderTrace | None: ...
    async def get_step(self, step_id: str) -> Step: ...
    async def get_step_metrics(self, step_id: str) -> StepMetrics | None: ...
    async def get_run(self, run_id: str) -> Run: ...
    def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]: ...
    async def get_agent(self, agent_id: str) -> Agent | None: ...


@dataclass(slots=True)
class _Item:
    """A step to handle, in discovery order."""

    step_id: str
    step: Step | None
    position: str | None  # the discovery cursor after this step (None: not from discovery)
    in_shard: bool = True
    seen: bool = False  # handled already (a step listed twice): only moves the cursor


@dataclass(slots=True)
class _Fetched:
    item: _Item
    trace: ProviderTrace | None = None
    context: TraceContext | None = None
    error: Exception | None = None


@dataclass(slots=True)
class _Entry:
    """Bookkeeping for one handled step inside a batch (applied once the batch is delivered)."""

    item: _Item
    span_index: int | None = None  # into the batch's spans
    run_id: str | None = None
    agent_id: str | None = None
    trace_id: str | None = None
    pending: PendingStep | None = None
    settled_missing: bool = False
    #: Another shard exports this step, but this shard owns its run (and so its parent span).
    foreign: bool = False


@dataclass(slots=True)
class _Batch:
    spans: list[ReadableSpan] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    last_position: str | None = None


async def _unless_gone(call: Awaitable[T]) -> T | None:
    """The record, or None when Letta answers 404 (deleted since it was listed)."""
    try:
        return await call
    except SourceHTTPError as exc:
        if exc.status_code == 404:
            return None
        raise


def in_shard(step_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether this replica owns the step: a stable hash of the id modulo the replica count."""
    if shard is None:
        return True
    index, count = shard
    return zlib.crc32(step_id.encode()) % count == index


class Worker:
    """Runs the pipeline for one filter set (one checkpoint stream).

    Args:
        client: the Letta source.
        exporter: any SpanExporter; ours report partial_success and permanent failures.
        checkpoint: the state file; ``stream`` selects this filter set's state in it.
        stream: the checkpoint stream key.
        filt: which steps to export.
        convert_options: content policy and id options.
        resource: the OTel resource of every span.
        options: batching, concurrency, retry and limit options.
        metrics: where counts go.
        dead_letter: where undeliverable records go.
        stop: set to stop; backoffs wait on it.
        on_progress: called with the running summary after each batch (progress bars).
        clock: Unix seconds (tests pass a fake).
    """

    def __init__(
        self,
        *,
        client: _Source | LettaClient,
        exporter: SpanExporter,
        checkpoint: Checkpoint,
        stream: str,
        filt: StepFilter,
        convert_options: ConvertOptions,
        resource: Resource,
        options: WorkerOptions,
        metrics: Metrics,
        dead_letter: DeadLetter,
        stop: asyncio.Event,
        on_progress: Callable[[ExportSummary], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client: _Source = client
        self._checkpoint = checkpoint
        self._state: StreamState = checkpoint.stream(stream)
        self._filter = filt
        self._convert = convert_options
        self._resource = resource
        self._options = options
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._stop = stop
        self._on_progress = on_progress
        self._clock = clock
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._run_loads: dict[str, asyncio.Future[Run]] = {}
        self._run_lookup = RunLookup(client, agent_ids=filt.agent_ids)
        self._mode = "steps"
        # How far discovery got in this pass: the newest step time (steps) or the run (runs).
        self._frontier: datetime | None = None
        self._frontier_run: str | None = None
        self._total = ExportSummary()
        self._log = RateLimitedLog(_logger)
        self._shipper = Shipper(
            exporter=exporter,
            metrics=metrics,
            dead_letter=dead_letter,
            stop=stop,
            deadline_seconds=options.export_deadline_seconds,
            retry_initial_seconds=options.retry_initial_seconds,
            retry_max_seconds=options.retry_max_seconds,
            dry_run=options.dry_run,
            on_wait=self._beat,
        )
        self._source_retries = 0
        self._poisoned: dict[str, int] = {}
        self.heartbeat = clock()
        self.passes = 0
        #: Why the last sidecar pass failed (None once one succeeds): the exit status says it.
        self.last_error: str | None = None

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def total(self) -> ExportSummary:
        """Everything done since this worker was made."""
        return self._total

    # ------------------------------------------------------------------ the pass
    async def run_pass(self, *, final: bool = False) -> ExportSummary:
        """Export everything new once.

        Args:
            final: the end of a one-shot window: ship the parents of runs still going too.

        Raises:
            Stopped: shutdown was requested while a batch was undelivered.
            UndeliveredError: (one-shot) the collector did not accept a batch in time.
            SourceError: Letta failed after retries; the checkpoint holds what was delivered.
        """
        summary = ExportSummary()
        self._runs.clear()
        # Run statuses change between passes: a fresh lookup (and its cache) per pass.
        await self._run_lookup.aclose()
        self._run_lookup = RunLookup(self._client, agent_ids=self._filter.agent_ids)
        self._frontier = self._frontier_run = None
        mode = await self._client.discovery_mode()
        self._mode = mode
        if self._state.mode not in (None, mode):
            _logger.warning(
                "discovery changed from %s to %s: the saved cursor does not apply, starting over "
                "(spans keep their ids, so a backend sees no duplicates)",
                self._state.mode,
                mode,
            )
            self._state.cursor = None
        self._state.mode = mode
        batch = _Batch()
        try:
            async for fetched in self._fetch_ahead(self._items(mode, summary)):
                await self._consume(fetched, batch, summary)
                if len(batch.spans) >= self._options.batch_size:
                    await self._ship(batch, summary)
                    batch = _Batch()
                self.heartbeat = self._clock()
            await self._ship(batch, summary)
            await self._ship_finished_runs(summary, final=final)
        finally:
            self._count_source_retries()
            summary.pending = len(self._state.pending)
            self._metrics.pending_traces.set(len(self._state.pending))
            self._metrics.open_runs.set(len(self._state.open_runs))
            self._total.add(summary)
        self.passes += 1
        self.heartbeat = self._clock()
        self._metrics.last_pass.set(self.heartbeat)
        self._metrics.lag_seconds.set(0)
        return summary

    def _count_source_retries(self) -> None:
        stats = getattr(self._client, "stats", None)
        retries = int(getattr(stats, "retries", 0))
        if retries > self._source_retries:
            self._metrics.retries.labels(hop="letta").inc(retries - self._source_retries)
            self._source_retries = retries

    async def _items(self, mode: str, summary: ExportSummary) -> AsyncIterator[_Item]:
        seen: set[str] = set()
        limit = self._options.limit
        if limit is not None:
            limit -= self._total.discovered
            if limit <= 0:
                return

        def fresh(step_id: str) -> bool:
            if step_id in seen:
                return False
            seen.add(step_id)
            return True

        for step_id in list(self._state.pending):
            if fresh(step_id):
                yield _Item(step_id=step_id, step=None, position=None)
        if mode == "runs":
            for run in list(self._state.open_runs.values()):
                async for added in self._client.list_run_steps(run.run_id, after=run.last_step_id):
                    if added.id not in run.step_ids and fresh(added.id):
                        yield self._item(added, None)
        count = 0
        async for found in self._client.discover(self._filter, resume=self._state.cursor):
            step: Step = found.step
            if found.run is not None:
                self._run_lookup.put(found.run)  # runs discovery listed it: no request for it
            if self._stop.is_set():
                return
            # Discovery yields a step once: only the steps asked again above need remembering
            # (a set of every id of a long backlog would grow with it).
            if step.id in seen or self._already_delivered(step):
                yield _Item(
                    step_id=step.id, step=step, position=found.position, in_shard=False, seen=True
                )
                continue
            item = self._item(step, found.position)
            if not item.in_shard:
                summary.skipped_shard += 1
            else:
                summary.discovered += 1
                count += 1
            yield item
            if limit is not None and count >= limit:
                return

    def _item(self, step: Step, position: str | None) -> _Item:
        return _Item(
            step_id=step.id,
            step=step,
            position=position,
            in_shard=in_shard(step.id, self._options.shard),
        )

    def _already_delivered(self, step: Step) -> bool:
        run = self._state.open_runs.get(step.run_id or "")
        return run is not None and step.id in run.step_ids

    async def _fetch_ahead(self, items: AsyncIterator[_Item]) -> AsyncIterator[_Fetched]:
        """Fetch up to ``4 x concurrency`` steps ahead, yielding results in discovery order.

        Deep enough that the requests in flight stay at ``concurrency`` while the consumer waits
        on one slow step or discovery fetches its next page; shallow enough to bound memory.
        """
        window: deque[asyncio.Future[_Fetched]] = deque()
        depth = max(2, self._options.concurrency * 4)
        loop = asyncio.get_running_loop()
        fetching = 0  # steps in the window that need requests (others' shards need none)
        try:
            async for item in items:
                if item.in_shard:
                    window.append(asyncio.ensure_future(self._fetch(item)))
                    fetching += 1
                else:
                    done = loop.create_future()
                    done.set_result(_Fetched(item))
                    window.append(done)
                while fetching >= depth or len(window) >= depth * 4:
                    head = window.popleft()
                    fetched = await head
                    fetching -= fetched.item.in_shard
                    yield fetched
            while window:
                yield await window.popleft()
        finally:
            for future in window:
                future.cancel()
            if window:
                await asyncio.gather(*window, return_exceptions=True)

    async def _fetch(self, item: _Item) -> _Fetched:
        if not item.in_shard:
            return _Fetched(item)
        # The listed step names its run: ask for the run beside the trace, not after it (one
        # round trip per step instead of two against a slow Letta).
        early_run = item.step.run_id if item.step is not None else None
        not_after = item.step.created_at if item.step is not None else None
        run_lookup: asyncio.Future[Run] | None = None
        if early_run:
            if (known := self._runs.get(early_run)) is not None:
                # Most steps' runs are known already: no task for them.
                run_lookup = asyncio.get_running_loop().create_future()
                run_lookup.set_result(known)
            else:
                run_lookup = asyncio.ensure_future(self._run(early_run, not_after))
        try:
            trace = await self._client.get_trace(item.step_id)
            step = item.step
            if step is None:
                # A step asked again (its trace was null): it may have been deleted since.
                step = await _unless_gone(self._client.get_step(item.step_id))
                item.step = step
            metrics = None
            if trace is not None and trace.latency_ms is None:
                metrics = await self._client.get_step_metrics(item.step_id)
            run_id = (trace.run_id if trace else None) or (step.run_id if step else None)
            run: Run | None
            if run_lookup is not None and run_id == early_run:
                run = await run_lookup
            else:
                run = await self._run(run_id) if run_id else None
            agent_id = (trace.agent_id if trace else None) or (step.agent_id if step else None)
            agent = await self._client.get_agent(agent_id) if agent_id else None
        except RecordInvalidError as exc:
            return _Fetched(item, error=exc)
        except SourceHTTPError as exc:
            # Letta keeps failing on this one step (the client already retried): after a few
            # passes that stopped on it, report it and move on rather than stall forever.
            failures = self._poisoned.get(item.step_id, 0) + 1
            self._poisoned[item.step_id] = failures
            if exc.status_code < 500 or failures < _POISON_PASSES:
                raise
            return _Fetched(item, error=exc)
        finally:
            if run_lookup is not None:
                if not run_lookup.done():
                    run_lookup.cancel()  # the shared load goes on for the other steps
                elif not run_lookup.cancelled():
                    run_lookup.exception()  # seen (or raised) above
        self._poisoned.pop(item.step_id, None)
        return _Fetched(
            item,
            trace=trace,
            context=TraceContext(step=step, metrics=metrics, run=run, agent=agent),
        )

    async def _run(self, run_id: str, not_after: datetime | None = None) -> Run:
        """The run, once per pass; a run deleted meanwhile is known only by its id.

        The steps of a run are fetched side by side, so concurrent lookups of one run share a
        single request; the cache is bounded (a long backlog touches every run once).
        """
        run = self._runs.get(run_id)
        if run is not None:
            return run
        loading = self._run_loads.get(run_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_run(run_id, not_after))
            self._run_loads[run_id] = loading
            loading.add_done_callback(lambda done: self._loaded(run_id, done))
        return await asyncio.shield(loading)

    async def _load_run(self, run_id: str, not_after: datetime | None = None) -> Run:
        run = await self._run_lookup.get(run_id, not_after=not_after) or Run(
            id=run_id, status="gone"
        )
        self._runs[run_id] = run
        while len(self._runs) > _RUN_CACHE_SIZE:
            self._runs.popitem(last=False)
        return run

    def _loaded(self, run_id: str, done: asyncio.Future[Run]) -> None:
        self._run_loads.pop(run_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have been cancelled

    async def _consume(self, fetched: _Fetched, batch: _Batch, summary: ExportSummary) -> None:
        item = fetched.item
        if item.position is not None:
            batch.last_position = item.position
            self._advance_frontier(item.step, fetched.context.run if fetched.context else None)
        if not item.in_shard:
            step = item.step
            if step is not None and step.run_id and not item.seen and self._owns_run(step.run_id):
                batch.entries.append(
                    _Entry(item=item, run_id=step.run_id, agent_id=step.agent_id, foreign=True)
                )
            return
        entry = _Entry(item=item)
        batch.entries.append(entry)
        step = item.step
        entry.run_id = step.run_id if step else None
        entry.agent_id = step.agent_id if step else None
        if fetched.error is not None:
            reason = "invalid" if isinstance(fetched.error, RecordInvalidError) else "unreadable"
            summary.invalid += 1
            summary.fail(f"{item.step_id}: {fetched.error}")
            self._metrics.traces_failed.labels(reason=reason).inc()
            self._dead_letter.write(reason, step_id=item.step_id, error=str(fetched.error))
            _logger.error(
                "step %s: %s (written to the dead-letter file)", item.step_id, fetched.error
            )
            return
        trace = fetched.trace
        if trace is None:
            self._handle_missing(entry, fetched.context, summary)
            return
        assert fetched.context is not None
        span = convert_trace(trace, fetched.context, options=self._convert, resource=self._resource)
        entry.span_index = len(batch.spans)
        entry.run_id = trace.run_id or entry.run_id
        entry.agent_id = trace.agent_id or entry.agent_id
        entry.trace_id = trace.id
        batch.spans.append(span)

    def _handle_missing(
        self, entry: _Entry, context: TraceContext | None, summary: ExportSummary
    ) -> None:
        now = self._clock()
        known = self._state.pending.get(entry.item.step_id)
        first_seen = known.first_seen if known else now
        attempts = known.attempts + 1 if known else 1
        settle = self._options.trace_settle_seconds
        run = context.run if context else None
        finished_long_ago = (
            run is not None
            and run.is_finished
            and run.completed_at is not None
            and now - run.completed_at.timestamp() >= settle
        )
        if finished_long_ago or now - first_seen >= settle:
            entry.settled_missing = True
            return
        entry.pending = PendingStep(
            step_id=entry.item.step_id,
            run_id=entry.run_id,
            first_seen=first_seen,
            attempts=attempts,
        )

    # ------------------------------------------------------------------ shipping
    def _beat(self) -> None:
        self.heartbeat = self._clock()

    async def _ship(self, batch: _Batch, summary: ExportSummary) -> None:
        """Deliver a batch, then record its steps and save the checkpoint."""
        if not batch.spans and not batch.entries and batch.last_position is None:
            return
        ids = [e.trace_id for e in batch.entries if e.trace_id]
        await self._shipper.ship(batch.spans, ids, summary)
        state = self._state
        for entry in batch.entries:
            step_id = entry.item.step_id
            if entry.pending is not None:
                state.pending[step_id] = entry.pending
                continue
            if entry.foreign:
                assert entry.run_id is not None
                state.open_runs.setdefault(
                    entry.run_id, OpenRun(run_id=entry.run_id, agent_id=entry.agent_id)
                ).add(step_id, None, None)
                continue
            state.pending.pop(step_id, None)
            if entry.settled_missing:
                summary.missing += 1
                self._metrics.traces_missing.inc()
                self._dead_letter.write("no_trace", step_id=step_id, run_id=entry.run_id)
                _logger.warning(
                    "step %s has no trace after the settle time (tracking off, or the call "
                    "failed before a trace was written); recorded in the dead-letter file",
                    step_id,
                )
                if entry.run_id and self._owns_run(entry.run_id):
                    # The run still happened (often a failed call): its span shows it.
                    state.open_runs.setdefault(
                        entry.run_id, OpenRun(run_id=entry.run_id, agent_id=entry.agent_id)
                    ).add(step_id, None, None)
                continue
            if entry.span_index is not None and entry.run_id and self._owns_run(entry.run_id):
                span = batch.spans[entry.span_index]
                run = state.open_runs.setdefault(
                    entry.run_id, OpenRun(run_id=entry.run_id, agent_id=entry.agent_id)
                )
                run.add(step_id, span.start_time, span.end_time)
        if batch.last_position is not None:
            state.cursor = batch.last_position
        state.delivered += len(batch.spans)
        self._checkpoint.save()
        if batch.spans and (last := batch.spans[-1].end_time):
            self._metrics.lag_seconds.set(max(0.0, self._clock() - last / 1e9))
        if self._on_progress is not None:
            self._on_progress(summary)
        await self._ship_passed_runs(summary)

    def _owns_run(self, run_id: str) -> bool:
        """Whether this shard ships the run's parent span (one shard per run, whichever shards
        export its steps), so sharded replicas never send a run span twice."""
        return in_shard(run_id, self._options.shard)

    def _advance_frontier(self, step: Step | None, run: Run | None) -> None:
        if step is None:
            return
        if self._mode == "runs":
            self._frontier_run = step.run_id
            return
        # Lower bounds of the step's creation time: its own (newer servers) and its run's.
        for when in (step.created_at, run.created_at if run is not None else None):
            if when is not None and (self._frontier is None or when > self._frontier):
                self._frontier = when

    def _passed(self, run: Run) -> bool:
        """Whether discovery went past every step of this finished run (so none can follow).

        Runs discovery lists a run's steps together, so a run is passed once a step of another
        run was discovered after it. Steps discovery goes by step time, a run's steps are all
        created before it completes, and a step is created after its run (or at its own
        ``created_at``): once discovery reached a step created surely after the run completed,
        no step of that run can follow.
        """
        if self._mode == "runs":
            return self._frontier_run is not None and run.id != self._frontier_run
        return (
            run.completed_at is not None
            and self._frontier is not None
            and self._frontier - run.completed_at > _RUN_PASSED_MARGIN
        )

    async def _ship_passed_runs(self, summary: ExportSummary) -> None:
        """Ship, mid-pass, the parents of finished runs discovery has gone past.

        Without this every run of a long backlog stays open until the end of the pass: memory
        and the checkpoint (rewritten after every batch) would grow with the backlog.
        """
        state = self._state
        if not state.open_runs:
            return
        waiting = {p.run_id for p in state.pending.values()}
        ready: list[tuple[OpenRun, Run]] = []
        for open_run in state.open_runs.values():
            run = self._runs.get(open_run.run_id)  # runs not looked up this pass wait for its end
            if run is None or open_run.run_id in waiting:
                continue
            if run.status == "gone" or (run.is_finished and self._passed(run)):
                ready.append((open_run, run))
        spans: list[ReadableSpan] = []
        done: list[str] = []
        for open_run, run in ready:
            spans.append(await self._run_span(open_run, run))
            done.append(open_run.run_id)
        await self._ship_runs(spans, done, summary)

    async def _run_span(self, open_run: OpenRun, run: Run) -> ReadableSpan:
        agent = await self._client.get_agent(run.agent_id or open_run.agent_id or "")
        return convert_run(
            run,
            agent=agent,
            first_start_ns=open_run.first_start_ns,
            last_end_ns=open_run.last_end_ns,
            step_count=len(open_run.step_ids),
            options=self._convert,
            resource=self._resource,
        )

    async def _ship_finished_runs(self, summary: ExportSummary, *, final: bool) -> None:
        """Ship the invoke_agent span of every run that can get no more spans."""
        state = self._state
        waiting = {p.run_id for p in state.pending.values()}
        spans: list[ReadableSpan] = []
        done: list[str] = []
        for open_run in list(state.open_runs.values()):
            run = await self._run(open_run.run_id)
            gone = run.status == "gone"
            if not final and not gone and (not run.is_finished or open_run.run_id in waiting):
                continue
            spans.append(await self._run_span(open_run, run))
            done.append(open_run.run_id)
            if len(spans) >= self._options.batch_size:
                await self._ship_runs(spans, done, summary)
                spans, done = [], []
        await self._ship_runs(spans, done, summary)

    async def _ship_runs(
        self, spans: list[ReadableSpan], run_ids: list[str], summary: ExportSummary
    ) -> None:
        if not spans:
            return
        await self._shipper.ship(spans, run_ids, summary, kind="run")
        for run_id in run_ids:
            self._state.open_runs.pop(run_id, None)
        self._checkpoint.save()

    # ------------------------------------------------------------------ the two modes
    async def run_forever(self, *, poll_seconds: float) -> None:
        """The sidecar: a pass every ``poll_seconds`` until ``stop`` is set.

        A pass that fails on Letta (after the client's retries) is logged and tried again at the
        next poll; the checkpoint holds what was delivered.
        """
        while not self._stop.is_set():
            try:
                await self.run_pass()
                self.last_error = None
            except Stopped:
                break
            except (SourceError, RecordInvalidError) as exc:
                # Letta down, or answering what it should not: nothing was lost (the checkpoint
                # holds what was delivered); the next poll tries again.
                self.last_error = str(exc)
                self._log.warning("source", "pass failed, trying again next poll: %s", exc)
            self.heartbeat = self._clock()
            await self._sleep(poll_seconds)

    async def export_window(self, *, poll_seconds: float = 5.0) -> ExportSummary:
        """The one-shot job: export everything, wait for traces not written yet (up to the
        settle time), then ship the parents of every run touched, finished or not.

        Raises:
            Stopped: shutdown was requested while a batch was undelivered.
            UndeliveredError: the collector did not accept a batch before the deadline.
            SourceError: Letta failed after retries.
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

    def _next_settle(self) -> float:
        now = self._clock()
        settle = self._options.trace_settle_seconds
        waits = [p.first_seen + settle - now for p in self._state.pending.values()]
        return max(0.05, min(waits, default=0.05))

    async def _sleep(self, seconds: float) -> None:
        await wait_or_stop(self._stop, seconds)
