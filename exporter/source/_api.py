"""The Letta API source: steps discovered since the cursor, each with its trace and context.

One pass walks everything new since the checkpoint, in discovery order:

1. steps whose trace was ``null`` last time (the stream's ``pending``) are asked again;
2. in runs discovery, runs still going (``open_runs``) are asked for steps added since;
3. discovery continues after the saved cursor.

Traces are fetched ahead of the consumer in a bounded window (``exporter._window``), so the
requests in flight stay at the client's concurrency while events come out in discovery
order. A trace still ``null`` is :class:`Awaiting` until ``trace_settle_seconds`` after it was
first seen (or after its run finished), then :class:`Missing`. With ``follow`` the source polls:
a pass every ``poll_seconds`` after :class:`CaughtUp`.

The stream's state (pending steps, open runs, mode) is read here and written by the worker once
a batch is delivered: this source never moves the checkpoint itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .._retry import wait_or_stop
from .._window import ordered_map
from ..checkpoint import PendingStep, StreamState
from ..errors import RecordInvalidError
from ..models import Run, Step
from ._contract import Awaiting, CaughtUp, Event, Found, Missing, Skipped, Unreadable
from ._enrich import ApiClient, Enriched, StepEnricher
from ._types import StepFilter, in_shard

__all__ = ["ApiSource"]

_logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    """A step to handle, in discovery order."""

    step_id: str
    step: Step | None
    position: str | None  # the discovery cursor after this step (None: not from discovery)
    in_shard: bool = True
    seen: bool = False  # handled already (a step listed twice): only moves the cursor


class ApiSource:
    """Steps and their traces from a Letta server (see the module docstring).

    Args:
        client: the Letta client.
        state: the checkpoint stream this source resumes (read here, written by the worker).
        stream: the stream's key.
        filt: which steps.
        shard: ``(index, count)`` of this replica, or None for all steps.
        concurrency: the client's concurrency (the window holds four times as many).
        trace_settle_seconds: how long a ``null`` trace is asked again before it is missing.
        limit: steps discovered at most over this source's life (None: no limit).
        poll_seconds: the wait between passes with ``follow``.
        stop: shutdown: discovery stops at the next step, a poll wait ends at once.
        clock: Unix seconds (tests pass a fake).
    """

    name = "api"

    def __init__(
        self,
        client: ApiClient,
        *,
        state: StreamState,
        stream: str,
        filt: StepFilter,
        stop: asyncio.Event | None = None,
        shard: tuple[int, int] | None = None,
        concurrency: int = 8,
        trace_settle_seconds: float = 300.0,
        limit: int | None = None,
        poll_seconds: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._state = state
        self._stream = stream
        self._filter = filt
        self._shard = shard
        self._depth = max(2, concurrency * 4)
        self._settle = trace_settle_seconds
        self._limit = limit
        self.poll_seconds = poll_seconds
        self._stop = stop if stop is not None else asyncio.Event()
        self._clock = clock
        self.lookups = StepEnricher(client, agent_ids=filt.agent_ids)
        #: ``steps`` or ``runs``: how discovery orders steps (the worker's run tracking uses it).
        self.order = "steps"
        self._discovered = 0

    @property
    def stats(self) -> object:
        """The client's counters (requests, retries), when it keeps them."""
        return getattr(self._client, "stats", None)

    def stream_key(self) -> str:
        return self._stream

    async def aclose(self) -> None:
        await self.lookups.aclose()

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """One pass (or, with ``follow``, a pass every ``poll_seconds``), ending in CaughtUp."""
        while True:
            last = resume
            async for event in self._pass(resume):
                if event.position is not None:
                    last = event.position
                yield event
            yield CaughtUp(position=last)
            if not follow or await wait_or_stop(self._stop, self.poll_seconds):
                return
            resume = self._state.cursor

    async def _pass(self, resume: str | None) -> AsyncIterator[Event]:
        await self.lookups.new_pass()
        mode = await self._client.discovery_mode()
        self.order = mode
        state = self._state
        if state.mode not in (None, mode):
            _logger.warning(
                "discovery changed from %s to %s: the saved cursor does not apply, starting over "
                "(spans keep their ids, so a backend sees no duplicates)",
                state.mode,
                mode,
            )
            state.cursor = resume = None
        state.mode = mode
        async for enriched_item in ordered_map(
            self._items(mode, resume),
            self._enrich,
            depth=self._depth,
            needs_work=lambda item: item.in_shard,
            done=lambda item: (item, Enriched(step=item.step)),
        ):
            yield self._event(*enriched_item)

    async def _enrich(self, item: _Item) -> tuple[_Item, Enriched]:
        return item, await self.lookups.enrich(item.step_id, item.step)

    def _event(self, item: _Item, got: Enriched) -> Event:
        if not item.in_shard:
            return Skipped(item.step_id, position=item.position, step=item.step, seen=item.seen)
        step = got.step if got.step is not None else item.step
        fresh = item.position is not None
        if got.error is not None:
            reason = "invalid" if isinstance(got.error, RecordInvalidError) else "unreadable"
            return Unreadable(
                record_id=item.step_id,
                reason=reason,
                detail=str(got.error),
                position=item.position,
                step=step,
                fresh=fresh,
                record_kind="step",
            )
        trace = got.trace
        if trace is not None:
            return Found(
                trace=trace,
                step=step,
                metrics=got.metrics,
                run=got.run,
                agent=got.agent,
                position=item.position,
                origin=self.name,
                fresh=fresh,
            )
        return self._missing(item, step, got.run, fresh=fresh)

    def _missing(self, item: _Item, step: Step | None, run: Run | None, *, fresh: bool) -> Event:
        """A trace still ``null``: awaited until it settles, then missing."""
        now = self._clock()
        known: PendingStep | None = self._state.pending.get(item.step_id)
        first_seen = known.first_seen if known else now
        attempts = known.attempts + 1 if known else 1
        run_id = step.run_id if step else None
        agent_id = step.agent_id if step else None
        finished_long_ago = (
            run is not None
            and run.is_finished
            and run.completed_at is not None
            and now - run.completed_at.timestamp() >= self._settle
        )
        if finished_long_ago or now - first_seen >= self._settle:
            return Missing(
                item.step_id,
                run_id=run_id,
                agent_id=agent_id,
                position=item.position,
                step=step,
                run=run,
                fresh=fresh,
            )
        return Awaiting(
            item.step_id,
            first_seen=first_seen,
            attempts=attempts,
            run_id=run_id,
            agent_id=agent_id,
            position=item.position,
            step=step,
            run=run,
            fresh=fresh,
        )

    async def _items(self, mode: str, resume: str | None) -> AsyncIterator[_Item]:
        seen: set[str] = set()
        limit = self._limit
        if limit is not None:
            limit -= self._discovered
            if limit <= 0:
                return

        def fresh(step_id: str) -> bool:
            if step_id in seen:
                return False
            seen.add(step_id)
            return True

        state = self._state
        for step_id in list(state.pending):
            if fresh(step_id):
                yield _Item(step_id=step_id, step=None, position=None)
        if mode == "runs":
            for run in list(state.open_runs.values()):
                async for added in self._client.list_run_steps(run.run_id, after=run.last_step_id):
                    if added.id not in run.step_ids and fresh(added.id):
                        yield self._item(added, None)
        count = 0
        async for found in self._client.discover(self._filter, resume=resume):
            step = found.step
            if found.run is not None:
                self.lookups.put_run(found.run)  # runs discovery listed it: no request for it
            if self._stop.is_set():
                return
            position = found.position
            # Discovery yields a step once: only the steps asked again above need remembering
            # (a set of every id of a long backlog would grow with it).
            if step.id in seen or self._already_delivered(step):
                yield _Item(
                    step_id=step.id, step=step, position=position, in_shard=False, seen=True
                )
                continue
            item = self._item(step, position)
            if item.in_shard:
                self._discovered += 1
                count += 1
            yield item
            if limit is not None and count >= limit:
                return

    def _item(self, step: Step, position: str | None) -> _Item:
        return _Item(
            step_id=step.id, step=step, position=position, in_shard=in_shard(step.id, self._shard)
        )

    def _already_delivered(self, step: Step) -> bool:
        run = self._state.open_runs.get(step.run_id or "")
        return run is not None and step.id in run.step_ids
