"""Step enrichment for the API source: a step's trace, with its run, agent and metrics.

A span needs more than the trace: the run (its status decides when the run's parent span can be
shipped), the agent (its name), and the step's metrics when the trace carries no latency. These
lookups are shared: concurrent lookups of one run or agent send one request, and runs come a
page of the runs list at a time (:class:`RunLookup`). A step Letta keeps failing on is retried
on a few passes, then reported and passed over (one bad record never holds up the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Final, Protocol, TypeVar

from .._ratelimit import RateLimitedLog
from .._singleflight import SingleFlight
from ..errors import RecordInvalidError, SourceError, SourceHTTPError
from ..models import Agent, ProviderTrace, Run, Step, StepMetrics
from ._contract import CaughtUp, Event, Found, Source
from ._runs import RunLookup
from ._types import DiscoveredStep, StepFilter

__all__ = ["ApiClient", "Enriched", "EnrichingSource", "StepEnricher"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Runs remembered within a pass (looked up by each of their steps, then for the parent span).
_RUN_CACHE_SIZE: Final = 4096
#: Passes in a row that may stop on the same step's trace (HTTP 5xx after retries, or a 4xx
#: other than 404) before that step is reported as unreadable and skipped. Five: a step whose
#: every try fails on five passes (30 tries with the default retries) is broken, not unlucky
#: (at 70% errors, one good step in 40,000 gets that far).
POISON_PASSES: Final = 5
#: Answers that are not one step's problem: a refused key stops every call alike (the pass
#: stops and is tried again; nothing is skipped), and 429 asks everyone to slow down.
_NOT_THE_RECORD: Final = frozenset({401, 403, 407, 429})


class ApiClient(Protocol):
    """What the API source needs from the Letta client (a narrow seam for tests)."""

    async def discovery_mode(self) -> str: ...
    def discover(
        self, filt: StepFilter, *, resume: str | None = None
    ) -> AsyncIterator[DiscoveredStep]: ...
    def list_run_steps(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]: ...
    async def get_trace(self, step_id: str) -> ProviderTrace | None: ...
    async def get_step(self, step_id: str) -> Step: ...
    async def get_step_metrics(self, step_id: str) -> StepMetrics | None: ...
    async def get_run(self, run_id: str) -> Run: ...
    def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]: ...
    async def get_agent(self, agent_id: str) -> Agent | None: ...


@dataclass(frozen=True, slots=True)
class Enriched:
    """A step's trace and context, or why it could not be read."""

    step: Step | None = None
    trace: ProviderTrace | None = None
    metrics: StepMetrics | None = None
    run: Run | None = None
    agent: Agent | None = None
    error: Exception | None = None


async def _unless_gone(call: Awaitable[T]) -> T | None:
    """The record, or None when Letta answers 404 (deleted since it was listed)."""
    try:
        return await call
    except SourceHTTPError as exc:
        if exc.status_code == 404:
            return None
        raise


class StepEnricher:
    """Looks up everything a step's span needs; run and agent lookups shared and cached.

    Args:
        client: the Letta client.
        agent_ids: the filter's agents (the runs list is read for these).
    """

    def __init__(self, client: ApiClient, *, agent_ids: tuple[str, ...] = ()) -> None:
        self.client = client
        self._client = client
        self._agent_ids = agent_ids
        self._lookup = RunLookup(client, agent_ids=agent_ids)
        self._runs: SingleFlight[str, Run] = SingleFlight(max_size=_RUN_CACHE_SIZE)
        self._poisoned: dict[str, int] = {}

    async def new_pass(self) -> None:
        """Forget the runs: their statuses change between passes."""
        await self._lookup.aclose()
        self._lookup = RunLookup(self._client, agent_ids=self._agent_ids)
        self._runs = SingleFlight(max_size=_RUN_CACHE_SIZE)

    def put_run(self, run: Run) -> None:
        """A run discovery listed anyway: no request for it."""
        self._lookup.put(run)

    def cached_run(self, run_id: str) -> Run | None:
        """The run if it was looked up this pass (no request)."""
        return self._runs.cached(run_id)

    async def run(self, run_id: str, not_after: datetime | None = None) -> Run:
        """The run, once per pass; a run deleted meanwhile is known only by its id."""
        return await self._runs.get(run_id, partial(self._load_run, run_id, not_after))

    async def _load_run(self, run_id: str, not_after: datetime | None) -> Run:
        run = await self._lookup.get(run_id, not_after=not_after)
        return run if run is not None else Run(id=run_id, status="gone")

    async def agent(self, agent_id: str) -> Agent | None:
        """The agent (cached by the client); None when it does not exist."""
        return await self._client.get_agent(agent_id)

    async def enrich(self, step_id: str, step: Step | None) -> Enriched:
        """The step's trace and context.

        A record Letta answers that does not fit its schema, and a step whose trace Letta
        failed on for :data:`POISON_PASSES` passes, come back with ``error`` set.

        Raises:
            SourceError: Letta failed (after retries) on a step that may still recover.
        """
        # The listed step names its run: ask for the run beside the trace, not after it (one
        # round trip per step instead of two against a slow Letta).
        early_run = step.run_id if step is not None else None
        not_after = step.created_at if step is not None else None
        run_lookup: asyncio.Future[Run] | None = None
        if early_run:
            if (known := self._runs.cached(early_run)) is not None:
                # Most steps' runs are known already: no task for them.
                run_lookup = asyncio.get_running_loop().create_future()
                run_lookup.set_result(known)
            else:
                run_lookup = asyncio.ensure_future(self.run(early_run, not_after))
        own = True  # failures of this step's own records count towards POISON_PASSES
        try:
            trace = await self._client.get_trace(step_id)
            if step is None:
                # A step asked again (its trace was null): it may have been deleted since.
                step = await _unless_gone(self._client.get_step(step_id))
            # The rest is shared (metrics aside): a run or an agent Letta fails on is every
            # step's problem, not this one's, so it never makes this step skipped.
            own = False
            self._poisoned.pop(step_id, None)
            metrics = None
            if trace is not None and trace.latency_ms is None:
                metrics = await self._client.get_step_metrics(step_id)
            run_id = (trace.run_id if trace else None) or (step.run_id if step else None)
            run: Run | None
            if run_lookup is not None and run_id == early_run:
                run = await run_lookup
            else:
                run = await self.run(run_id) if run_id else None
            agent_id = (trace.agent_id if trace else None) or (step.agent_id if step else None)
            agent = await self._client.get_agent(agent_id) if agent_id else None
        except RecordInvalidError as exc:
            return Enriched(step=step, error=exc)
        except SourceHTTPError as exc:
            # Letta keeps failing on this one step (the client already retried): after a few
            # passes that stopped on it, report it and move on rather than stall forever.
            if not own or exc.status_code in _NOT_THE_RECORD:
                raise
            failures = self._poisoned.get(step_id, 0) + 1
            self._poisoned[step_id] = failures
            if failures < POISON_PASSES:
                raise
            return Enriched(step=step, error=exc)
        finally:
            if run_lookup is not None:
                if not run_lookup.done():
                    run_lookup.cancel()  # the shared load goes on for the other steps
                elif not run_lookup.cancelled():
                    run_lookup.exception()  # seen (or raised) above
        return Enriched(step=step, trace=trace, metrics=metrics, run=run, agent=agent)

    async def aclose(self) -> None:
        await self._lookup.aclose()


class EnrichingSource:
    """Another source's events, with the context its traces lack looked up in the Letta API.

    For a source that sees only traces (the socket source): each :class:`Found` without a step,
    run or agent gets them from ``enricher`` (metrics too when the trace has no latency), in a
    read-ahead window like the API source's, so events keep their order. A lookup that fails
    leaves that part out (a span is made either way) and is logged, rate-limited. Runs are
    looked up again after each :class:`CaughtUp` (their statuses change). Pass ``enricher`` as
    the worker's ``runs`` too, so parent spans see the same runs.

    Enrichment never holds shipping up for long: a trace's lookups get ``timeout`` seconds (the
    client's retries included), and after a lookup failed or timed out the next ``pause``
    seconds of traces go without any (Letta is down or slow: every record would wait the full
    timeout), then lookups are tried again.

    Args:
        source: the source to wrap.
        enricher: the API lookups.
        depth: events with lookups in flight at most.
        timeout: seconds a trace's lookups may take before it goes without its context.
        pause: seconds without lookups after one failed.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        source: Source,
        enricher: StepEnricher,
        *,
        depth: int = 32,
        timeout: float = 10.0,
        pause: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._enricher = enricher
        self._depth = depth
        self._timeout = timeout
        self._pause = pause
        self._clock = clock
        self._down_until = 0.0
        self._log = RateLimitedLog(_logger)
        self.name = source.name
        #: Traces exported without (some of) their context: a lookup failed, timed out or
        #: was not tried while Letta was failing.
        self.without_context = 0

    def stream_key(self) -> str:
        return self._source.stream_key()

    async def aclose(self) -> None:
        await self._source.aclose()
        await self._enricher.aclose()

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        # Like the read-ahead window of ``_window.ordered_map``, but a CaughtUp flushes it: a
        # followed source (the socket) may send nothing more for a long time, and what it sent
        # must not wait in the window for more to come.
        window: deque[asyncio.Future[Event]] = deque()
        loop = asyncio.get_running_loop()
        try:
            async for event in self._source.read(resume=resume, follow=follow):
                if isinstance(event, CaughtUp):
                    while window:
                        yield await window.popleft()
                    yield event
                    await self._enricher.new_pass()
                    continue
                if self._needs_work(event):
                    window.append(asyncio.ensure_future(self._complete(event)))
                else:
                    ready = loop.create_future()
                    ready.set_result(self._as_is(event))
                    window.append(ready)
                while len(window) >= self._depth:
                    yield await window.popleft()
            while window:
                yield await window.popleft()
        finally:
            for future in window:
                future.cancel()
            if window:
                await asyncio.gather(*window, return_exceptions=True)

    def _needs_work(self, event: Event) -> bool:
        return _lacks_context(event) and self._clock() >= self._down_until

    def _as_is(self, event: Event) -> Event:
        if _lacks_context(event):
            self.without_context += 1
        return event

    async def _complete(self, event: Event) -> Event:
        assert isinstance(event, Found)
        if self._clock() < self._down_until:  # failed meanwhile: do not wait on it again
            return self._as_is(event)
        try:
            return await asyncio.wait_for(self._lookup(event), self._timeout)
        except TimeoutError:
            self._down_until = self._clock() + self._pause
            self._log.warning(
                "enrich",
                "context of trace %s not found within %.0fs, exported without it; no lookups "
                "for %.0fs",
                event.trace.id,
                self._timeout,
                self._pause,
            )
            return self._as_is(event)

    async def _lookup(self, event: Found) -> Event:
        trace = event.trace
        step, run, agent, metrics = event.step, event.run, event.agent, event.metrics
        try:
            if step is None and trace.step_id:
                step = await _unless_gone(self._enricher.client.get_step(trace.step_id))
            run_id = trace.run_id or (step.run_id if step else None)
            if run is None and run_id:
                run = await self._enricher.run(run_id)
            agent_id = trace.agent_id or (step.agent_id if step else None)
            if agent is None and agent_id:
                agent = await self._enricher.agent(agent_id)
            if metrics is None and trace.latency_ms is None and trace.step_id:
                metrics = await self._enricher.client.get_step_metrics(trace.step_id)
        except (SourceError, RecordInvalidError) as exc:
            self.without_context += 1
            if not isinstance(exc, RecordInvalidError):
                self._down_until = self._clock() + self._pause
            self._log.warning(
                "enrich", "context of trace %s not found, exported without it: %s", trace.id, exc
            )
        return replace(event, step=step, run=run, agent=agent, metrics=metrics)


def _lacks_context(event: Event) -> bool:
    return isinstance(event, Found) and (
        event.step is None or event.run is None or event.agent is None
    )
