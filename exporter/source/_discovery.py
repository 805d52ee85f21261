"""Finding steps: through ``GET /v1/steps/`` where it works, else through the runs.

Letta has no route that lists provider traces, so the exporter lists steps and asks each for its
trace. Two ways to list them:

``steps``
    ``GET /v1/steps/?order=asc&after=<last id>``: every step, oldest first, with the filters done
    by the server. Newer servers and Letta Cloud. Position: the step id.
``runs``
    ``GET /v1/runs/`` (oldest first) and, for each run, ``GET /v1/runs/{id}/steps``. Needed on
    Letta 0.16.8, whose ``GET /v1/steps/`` answers 400 to every call. Steps carry no timestamps
    there, so ``since``/``until`` apply to the run's ``created_at``. Position:
    ``<run id>/<step id>/<run created_at>``; resuming lists that run's remaining steps, then the
    runs created after it.

Quirks handled here:

* Several agent ids: ``GET /v1/steps/`` takes one ``agent_id``, so with more than one the server
  is asked for all steps and the others are dropped client-side (one pass in global order, and
  the position stays a single step id). ``GET /v1/runs/`` takes the list (``agent_ids``).
* The runs list of 0.16.8 has its cursors swapped (``order=asc&after=X`` answers the runs
  *before* X). A page that makes no progress (a run already seen, or older than the cursor) is
  detected; the other cursor parameter is tried, and used from then on if it progresses. When
  neither does, the listing stops cleanly with a warning instead of looping forever.
* Every filter is also checked client-side, so a server that ignores one still gives the right
  steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from ..errors import SourceError, SourceHTTPError
from ..models import Run, Step, parse_record
from ._http import Requester
from ._runs_list import RunsListing, parse_steps
from ._types import DiscoveredStep, StepFilter

__all__ = ["Discovery", "DiscoveryMode", "decode_position", "encode_run_position"]

_logger = logging.getLogger(__name__)

DiscoveryMode = Literal["steps", "runs"]

#: Answers of the steps probe that mean "this server cannot list steps": use the runs.
_FALLBACK_STATUSES: Final = frozenset({400, 404, 405, 422})
_STEPS_PATH: Final = "/v1/steps/"


def encode_run_position(run: Run | str, step_id: str, created_at: datetime | None) -> str:
    """The runs-discovery position after ``step_id`` of a run."""
    run_id = run.id if isinstance(run, Run) else run
    stamp = created_at.isoformat() if created_at is not None else ""
    return f"{run_id}/{step_id}/{stamp}"


def decode_position(position: str) -> tuple[str | None, str, datetime | None]:
    """Split a position into ``(run id or None, step id, run created_at or None)``.

    A steps-discovery position is a bare step id; a runs-discovery one also names the run, so
    either can be resumed in either mode.

    Raises:
        SourceError: the text is not a position this module wrote.
    """
    parts = position.strip().split("/")
    if len(parts) == 1 and parts[0] and " " not in parts[0]:
        return None, parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] and " " not in position.strip():
        stamp: datetime | None = None
        if parts[2]:
            try:
                stamp = datetime.fromisoformat(parts[2])
            except ValueError:
                raise SourceError(f"cannot resume from position {position!r}: bad time") from None
        return parts[0], parts[1], stamp
    raise SourceError(f"cannot resume from position {position!r}: not a discovery position")


def _aware(filt: StepFilter) -> StepFilter:
    """The filter with naive times read as UTC, as everywhere in Letta."""
    since, until = filt.since, filt.until
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return replace(filt, since=since, until=until)


def _matches(step: Step, filt: StepFilter, *, by_time: bool) -> bool:
    """Client-side check of every filter (the server may ignore some of them)."""
    if filt.agent_ids and step.agent_id not in filt.agent_ids:
        return False
    if filt.model is not None and step.model is not None and step.model != filt.model:
        return False
    if filt.project_id is not None and step.project_id not in (None, filt.project_id):
        return False
    if by_time and step.created_at is not None:
        if filt.since is not None and step.created_at <= filt.since:
            return False
        if filt.until is not None and step.created_at >= filt.until:
            return False
    return True


def _forget(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned read-ahead's outcome as seen (nobody waits for it any more)."""
    if not future.cancelled():
        future.exception()


class Discovery:
    """Lists steps and runs lazily, one page at a time (memory does not grow with the count).

    Args:
        requester: the GET layer.
        page_size: records asked per page.
        mode: ``auto`` probes ``GET /v1/steps/`` once; ``steps`` / ``runs`` force a mode.
    """

    def __init__(
        self,
        requester: Requester,
        *,
        page_size: int,
        mode: Literal["auto", "steps", "runs"],
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._requester = requester
        self._page_size = page_size
        self._forced = None if mode == "auto" else mode
        self._mode: DiscoveryMode | None = None
        self.reason = ""
        self._mode_lock = asyncio.Lock()
        self._runs = RunsListing(requester, page_size=page_size)

    # ------------------------------------------------------------------ mode
    async def mode(self) -> DiscoveryMode:
        """The discovery in use, probing the server the first time only."""
        if self._mode is not None:
            return self._mode
        async with self._mode_lock:
            if self._mode is None:
                mode, self.reason = await self._choose()
                _logger.info("Letta step discovery: %s (%s)", mode, self.reason)
                self._mode = mode
        return self._mode

    async def _choose(self) -> tuple[DiscoveryMode, str]:
        if self._forced is not None:
            return self._forced, "set by the discovery setting"
        try:
            await self._requester.get_parsed(_STEPS_PATH, parse_steps, {"limit": 1, "order": "asc"})
        except SourceHTTPError as exc:
            if exc.status_code not in _FALLBACK_STATUSES:
                raise
            return "runs", (
                f"GET {_STEPS_PATH} answered HTTP {exc.status_code}; "
                f"listing runs, then each run's steps"
            )
        return "steps", f"GET {_STEPS_PATH} works"

    # ------------------------------------------------------------------ discover
    async def discover(
        self, filt: StepFilter, *, resume: str | None = None
    ) -> AsyncIterator[DiscoveredStep]:
        """Every step matching ``filt``, oldest first, each with its resume position."""
        where = decode_position(resume) if resume else None
        filt = _aware(filt)
        if await self.mode() == "steps":
            async for found in self._discover_steps(filt, where[1] if where else None):
                yield found
        else:
            async for found in self._discover_runs(filt, where):
                yield found

    async def _discover_steps(
        self, filt: StepFilter, after: str | None
    ) -> AsyncIterator[DiscoveredStep]:
        params: dict[str, str | int] = {"order": "asc", "limit": self._page_size}
        if filt.since is not None:
            params["start_date"] = filt.since.isoformat()
        if filt.until is not None:
            params["end_date"] = filt.until.isoformat()
        if len(filt.agent_ids) == 1:
            params["agent_id"] = filt.agent_ids[0]
        if filt.model is not None:
            params["model"] = filt.model
        if filt.project_id is not None:
            params["project_id"] = filt.project_id
        previous: set[str] = {after} if after else set()

        async def fetch(cursor: str | None) -> list[Step]:
            page_params = dict(params, after=cursor) if cursor else params
            return await self._requester.get_parsed(_STEPS_PATH, parse_steps, page_params) or []

        ahead: asyncio.Future[list[Step]] | None = None
        try:
            page = await fetch(after)
            while page:
                if any(step.id in previous for step in page):
                    _logger.warning(
                        "GET %s makes no progress after step %s; stopping this pass",
                        _STEPS_PATH,
                        after,
                    )
                    return
                previous = {step.id for step in page}
                after = page[-1].id
                # Ask for the next page while this one is handed out, so that the fetchers
                # never wait a round trip for steps between two pages.
                ahead = asyncio.ensure_future(fetch(after))
                # Seen at once: when this generator is abandoned without being closed (its
                # consumer failed), the page's failure must not be logged as never retrieved.
                ahead.add_done_callback(_forget)
                for step in page:
                    if _matches(step, filt, by_time=True):
                        yield DiscoveredStep(step=step, position=step.id)
                page, ahead = await ahead, None
        finally:
            if ahead is not None:
                ahead.cancel()

    async def _discover_runs(
        self, filt: StepFilter, where: tuple[str | None, str, datetime | None] | None
    ) -> AsyncIterator[DiscoveredStep]:
        start: tuple[str, datetime | None] | None = None
        if where is not None:
            run_id, step_id, created_at = where
            if run_id is None:
                # A position from steps discovery: the step knows its run.
                run_id, created_at = await self._run_of_step(step_id)
            elif created_at is None:
                created_at = await self._run_created_at(run_id)
            if run_id is not None:
                async for step in self._steps_of(run_id, after=step_id):
                    if _matches(step, filt, by_time=False):
                        yield DiscoveredStep(step, encode_run_position(run_id, step.id, created_at))
                start = (run_id, created_at)
        async for run in self._runs.iterate(filt, start=start):
            async for step in self._steps_of(run.id):
                if _matches(step, filt, by_time=False):
                    yield DiscoveredStep(
                        step, encode_run_position(run, step.id, run.created_at), run=run
                    )

    async def _run_of_step(self, step_id: str) -> tuple[str | None, datetime | None]:
        step = await self._requester.get_parsed(
            f"/v1/steps/{step_id}", _parse_step, missing_ok=True
        )
        if step is None or step.run_id is None:
            _logger.warning(
                "resume step %s is gone or has no run: runs discovery starts from the first run",
                step_id,
            )
            return None, None
        return step.run_id, await self._run_created_at(step.run_id)

    async def _run_created_at(self, run_id: str) -> datetime | None:
        # The cursor run's time lets a listing notice a cursor that goes backwards.
        run = await self._requester.get_parsed(f"/v1/runs/{run_id}", _parse_run, missing_ok=True)
        return run.created_at if run is not None else None

    async def _steps_of(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]:
        """A run's steps; a run deleted meanwhile (404) has none, rather than ending the pass."""
        try:
            async for step in self.list_run_steps(run_id, after=after):
                yield step
        except SourceHTTPError as exc:
            if exc.status_code != 404:
                raise
            _logger.warning(
                "run %s%s is gone; going on with the next run",
                run_id,
                f" (or its step {after})" if after else "",
            )

    # ------------------------------------------------------------------ runs
    def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]:
        """Runs matching the filter's agents and time window, oldest first (after ``after``)."""
        start = (after.id, after.created_at) if after is not None else None
        return self._runs.iterate(_aware(filt), start=start)

    async def list_run_steps(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]:
        """A run's steps, oldest first, after step ``after`` (this route pages correctly).

        A page shorter than asked is the last one: the route honours ``limit``.
        """
        path = f"/v1/runs/{run_id}/steps"
        params: dict[str, str | int] = {"order": "asc", "limit": self._page_size}
        previous: set[str] = {after} if after else set()
        while True:
            page_params = dict(params, after=after) if after else params
            page = await self._requester.get_parsed(path, parse_steps, page_params) or []
            if any(step.id in previous for step in page):
                _logger.warning("GET %s makes no progress after step %s; stopping", path, after)
                return
            for step in page:
                yield step
            if len(page) < self._page_size:
                return
            previous = {step.id for step in page}
            after = page[-1].id


def _parse_step(raw: bytes) -> Step:
    return parse_record(Step, raw)


def _parse_run(raw: bytes) -> Run:
    return parse_record(Run, raw)
