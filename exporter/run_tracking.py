"""When a run's ``invoke_agent`` parent span is due: pure logic over the open runs and a clock.

A run's parent span covers all its steps, so it is shipped once no more steps can come:

* a run whose status the source knows (the API, the database): once it is finished and the
  source has gone past its last step (:meth:`RunTracker.passed`), or once Letta no longer
  knows it (``gone``);
* a run whose status the source does not know (``status`` is None: the socket source sees only
  traces): once no step of it was seen for ``idle_seconds``, the idle rule;
* a run with a step whose trace is still awaited is never due (the step may still come);
* at the end of a one-shot export every open run is due.

No I/O and no wall clock here: the worker passes the runs it knows, and the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final, Protocol

from .checkpoint import OpenRun, PendingStep
from .models import Agent, Run, Step

__all__ = ["LocalRuns", "RunContext", "RunTracker", "waiting_runs"]

#: Discovery must be this far past a finished run's completion before its parent span is shipped
#: mid-pass (steps are created before their run completes; the margin absorbs clock skew).
RUN_PASSED_MARGIN: Final = timedelta(seconds=5)
#: The idle rule's default: a run with no step for this long is over.
DEFAULT_IDLE_SECONDS: Final = 300.0


def waiting_runs(pending: Mapping[str, PendingStep]) -> set[str | None]:
    """The runs with a step whose trace is still awaited."""
    return {p.run_id for p in pending.values()}


class RunContext(Protocol):
    """Where the worker finds runs and agents for parent spans (the API, or what was seen)."""

    def cached_run(self, run_id: str) -> Run | None:
        """The run as known now (no request); None when not known this pass."""
        ...

    def run(self, run_id: str) -> Awaitable[Run]:
        """The run, looked up if need be."""
        ...

    def agent(self, agent_id: str) -> Awaitable[Agent | None]:
        """The agent, for its name."""
        ...


class LocalRuns:
    """A :class:`RunContext` for a source without an API: the runs and agents its events carry.

    A run no event carried is known by its id alone, with no status (the idle rule applies).
    """

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._agents: dict[str, Agent] = {}

    def remember(self, run: Run | None, agent: Agent | None) -> None:
        if run is not None:
            self._runs[run.id] = run
        if agent is not None:
            self._agents[agent.id] = agent

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def cached_run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id) or Run(id=run_id)

    async def run(self, run_id: str) -> Run:
        return self._runs.get(run_id) or Run(id=run_id)

    async def agent(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)


class RunTracker:
    """How far the source got, and which open runs are due.

    Args:
        idle_seconds: the idle rule's wait for runs without a status (None: never by idleness).
        clock: Unix seconds (tests pass a fake).
        margin: how far past a finished run's completion discovery must be (steps order).
    """

    def __init__(
        self,
        *,
        idle_seconds: float | None = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.time,
        margin: timedelta = RUN_PASSED_MARGIN,
    ) -> None:
        self._idle = idle_seconds
        self._clock = clock
        self._margin = margin
        self._order = "steps"
        self._frontier: datetime | None = None
        self._frontier_run: str | None = None
        self._last_seen: dict[str, float] = {}

    def new_pass(self) -> None:
        """Forget how far the last pass got (a new pass starts at the cursor)."""
        self._frontier = self._frontier_run = None

    def advance(self, step: Step | None, run: Run | None, *, order: str = "steps") -> None:
        """The source yielded ``step`` at a new position (``order``: ``steps`` or ``runs``)."""
        if step is None:
            return
        self._order = order
        if step.run_id:
            self._last_seen[step.run_id] = self._clock()
        if order == "runs":
            self._frontier_run = step.run_id
            return
        # Lower bounds of the step's creation time: its own (newer servers) and its run's.
        for when in (step.created_at, run.created_at if run is not None else None):
            if when is not None and (self._frontier is None or when > self._frontier):
                self._frontier = when

    def seen(self, run_id: str) -> None:
        """A step of ``run_id`` arrived (for the idle rule)."""
        self._last_seen[run_id] = self._clock()

    def closed(self, run_id: str) -> None:
        """The run's parent span was shipped."""
        self._last_seen.pop(run_id, None)

    def passed(self, run: Run) -> bool:
        """Whether the source went past every step of this finished run (none can follow).

        Runs order lists a run's steps together, so a run is passed once a step of another run
        came after it. Steps order goes by step time; a run's steps are all created before it
        completes, so once a step created surely after the run completed came, none of its
        steps can follow.
        """
        if self._order == "runs":
            return self._frontier_run is not None and run.id != self._frontier_run
        return (
            run.completed_at is not None
            and self._frontier is not None
            and self._frontier - run.completed_at > self._margin
        )

    def idle(self, run_id: str) -> bool:
        """Whether the idle rule closes this run (no status known, no step for a while)."""
        if self._idle is None:
            return False
        last = self._last_seen.get(run_id)
        return last is None or self._clock() - last >= self._idle

    def due_now(
        self,
        open_runs: Iterable[OpenRun],
        pending: Mapping[str, PendingStep],
        known: Callable[[str], Run | None],
    ) -> list[tuple[OpenRun, Run]]:
        """The open runs whose parent span can go out mid-pass.

        ``known`` gives the runs looked up this pass: the others wait for the pass's end.
        """
        waiting = waiting_runs(pending)
        ready: list[tuple[OpenRun, Run]] = []
        for open_run in open_runs:
            run = known(open_run.run_id)
            if run is None or open_run.run_id in waiting:
                continue
            if self._over(run, mid_pass=True):
                ready.append((open_run, run))
        return ready

    def due_at_end(
        self, open_run: OpenRun, run: Run, waiting: Collection[str | None], *, final: bool
    ) -> bool:
        """Whether the run's parent span goes out at the end of a pass (``final``: the last).

        ``waiting``: the runs with a step whose trace is awaited (:func:`waiting_runs`).
        """
        if final or run.status == "gone":
            return True
        if open_run.run_id in waiting:
            return False
        return self._over(run, mid_pass=False)

    def _over(self, run: Run, *, mid_pass: bool) -> bool:
        if run.status == "gone":
            return True
        if run.status is None:
            return self.idle(run.id)
        return run.is_finished and (not mid_pass or self.passed(run))
