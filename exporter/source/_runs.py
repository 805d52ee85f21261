"""Runs by id, read a page of the runs list at a time instead of one request per run.

The worker needs each step's run (its status decides when the run's parent span can be shipped),
and a backlog has about one run for every two steps: one ``GET /v1/runs/{id}`` per run would be a
third of all requests. Steps are discovered oldest first and a run is created just before its
first step, so the runs list read oldest first, from the first run asked for, stays in step with
discovery: one page serves the next ``page_size`` runs.

A run that is not ahead in the list (a run created long before its step, or one outside the
list's filters) is asked for directly. When the list runs dry (a sidecar that has caught up:
every new run is the newest), reading it again costs a request that finds nothing, so after a
dry read the next few misses are asked directly, more of them after each dry read in a row.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Final, Protocol

from ..errors import SourceHTTPError
from ..models import Run
from ._types import StepFilter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator as _Iter

    class _Client(Protocol):
        async def get_run(self, run_id: str) -> Run: ...
        def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> _Iter[Run]: ...


__all__ = ["RunLookup"]

_CACHE_SIZE: Final = 4096
_MAX_DIRECT_AFTER_DRY: Final = 64
#: Runs read from the list for one lookup at most, when the step gives no time to stop at.
_MAX_SCAN: Final = 2000


class RunLookup:
    """Finds runs for the worker, sharing pages of the runs list between them.

    Args:
        client: the Letta client.
        agent_ids: the agents whose runs are listed (all when empty).
        cache_size: runs kept (a long backlog touches every run once: bounded).
    """

    def __init__(
        self, client: _Client, *, agent_ids: tuple[str, ...] = (), cache_size: int = _CACHE_SIZE
    ) -> None:
        self._client = client
        self._filter = StepFilter(agent_ids=agent_ids)
        self._cache: OrderedDict[str, Run] = OrderedDict()
        self._cache_size = cache_size
        self._lock = asyncio.Lock()
        self._listing: AsyncIterator[Run] | None = None
        self._listed_any = False
        self._direct_left = 0  # misses to ask directly before reading the list again
        self._dry_reads = 0

    def put(self, run: Run) -> None:
        """Remember a run found elsewhere (runs discovery lists them anyway)."""
        self._cache[run.id] = run
        self._cache.move_to_end(run.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def get(self, run_id: str, *, not_after: datetime | None = None) -> Run | None:
        """The run, or None when Letta does not know it (deleted).

        Args:
            run_id: the run.
            not_after: the run was created no later than this (its step's time): reading the
                list past it cannot find the run.

        Raises:
            SourceError: Letta failed after retries.
        """
        if (run := self._cache.get(run_id)) is not None:
            return run
        if self._listing is not None:
            # One reader of the list at a time; the others wait for the page it brings.
            async with self._lock:
                if (run := self._cache.get(run_id)) is not None:
                    return run
                if self._listing is not None:
                    found = await self._read_list_until(run_id, not_after)
                    if found is not None:
                        return found
        run = await self._direct(run_id)
        if run is not None and self._listing is None:
            if self._direct_left > 0:
                self._direct_left -= 1
            else:
                self._listing = self._client.list_runs(self._filter, after=run)
                self._listed_any = False
        return run

    async def aclose(self) -> None:
        """Stop reading the list (closes its generator).

        Under the readers' lock: a lookup another task still runs (a shared run load outlives
        the step that started it) may be inside the generator, and closing a running async
        generator raises ``RuntimeError``.
        """
        async with self._lock:
            listing, self._listing = self._listing, None
            if listing is not None:
                await listing.aclose()  # type: ignore[attr-defined]

    async def _read_list_until(self, run_id: str, not_after: datetime | None) -> Run | None:
        assert self._listing is not None
        for _ in range(_MAX_SCAN):
            try:
                run = await anext(self._listing)
            except StopAsyncIteration:
                self._listing = None
                if self._listed_any:
                    self._dry_reads = 0
                else:
                    self._dry_reads += 1
                    self._direct_left = min(2**self._dry_reads, _MAX_DIRECT_AFTER_DRY)
                return None
            self._listed_any = True
            self.put(run)
            if run.id == run_id:
                return run
            if not_after is not None and run.created_at is not None and run.created_at > not_after:
                return None  # the list is past where the run would be
        return None

    async def _direct(self, run_id: str) -> Run | None:
        try:
            run = await self._client.get_run(run_id)
        except SourceHTTPError as exc:
            if exc.status_code == 404:
                return None
            raise
        self.put(run)
        return run
