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
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from .._ratelimit import RateLimitedLog
from ..errors import RecordInvalidError, SourceError, SourceHTTPError
from ..models import Run, Step, load_json, parse_record, parse_records
from ._http import Params, Requester
from ._types import DiscoveredStep, StepFilter

__all__ = ["Discovery", "DiscoveryMode", "decode_position", "encode_run_position"]

_logger = logging.getLogger(__name__)

DiscoveryMode = Literal["steps", "runs"]
_Cursor = Literal["after", "before"]

#: Answers of the steps probe that mean "this server cannot list steps": use the runs.
_FALLBACK_STATUSES: Final = frozenset({400, 404, 405, 422})
#: How many recent run ids a listing remembers to notice a cursor going round in circles.
_RECENT_RUN_IDS: Final = 4096
_STEPS_PATH: Final = "/v1/steps/"
_RUNS_PATH: Final = "/v1/runs/"


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


class _RecentIds:
    """The last few thousand ids seen, in bounded memory."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._order: deque[str] = deque()
        self._set: set[str] = set()
        for value in ids:
            self.add(value)

    def __contains__(self, value: object) -> bool:
        return value in self._set

    def add(self, value: str) -> None:
        if value in self._set:
            return
        self._order.append(value)
        self._set.add(value)
        if len(self._order) > _RECENT_RUN_IDS:
            self._set.discard(self._order.popleft())


def _forget(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned read-ahead's outcome as seen (nobody waits for it any more)."""
    if not future.cancelled():
        future.exception()


_skipped_log = RateLimitedLog(_logger)


def _parse_page(model: type[Step] | type[Run], raw: bytes) -> list[Any]:
    """A list page's records; an item that does not fit its schema is reported and left out.

    Why: the page as a whole is re-read on every pass, so one unreadable item would otherwise
    stop discovery at that page for good. A body that is not a JSON array at all is still an
    error (nothing in it can be told apart).
    """
    try:
        return parse_records(model, raw)
    except RecordInvalidError as exc:
        error = exc
    try:
        items = load_json(raw)
    except ValueError:
        raise error from None
    if not isinstance(items, list):
        raise error
    kept: list[Any] = []
    for index, item in enumerate(items):
        try:
            kept.append(parse_record(model, json.dumps(item)))
        except (RecordInvalidError, ValueError) as exc:
            record_id = item.get("id") if isinstance(item, dict) else None
            _skipped_log.log(
                f"skip:{record_id or index}",
                logging.ERROR,
                "a %s in a list page does not fit its schema and is skipped: %s (item %d, id %s)",
                model.__name__.lower(),
                exc,
                index,
                record_id if isinstance(record_id, str) else "unknown",
            )
    return kept


def _parse_steps(raw: bytes) -> list[Step]:
    return _parse_page(Step, raw)


def _parse_runs(raw: bytes) -> list[Run]:
    return _parse_page(Run, raw)


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
        self._runs_cursor: _Cursor = "after"
        self._swap_logged = False
        self._cursor_known = False  # a page after a cursor came back with runs

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
            await self._requester.get_parsed(
                _STEPS_PATH, _parse_steps, {"limit": 1, "order": "asc"}
            )
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
            return await self._requester.get_parsed(_STEPS_PATH, _parse_steps, page_params) or []

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
        async for run in self._iter_runs(filt, start=start):
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
    async def list_run_steps(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]:
        """A run's steps, oldest first, after step ``after`` (this route pages correctly).

        A page shorter than asked is the last one: the route honours ``limit``.
        """
        path = f"/v1/runs/{run_id}/steps"
        params: dict[str, str | int] = {"order": "asc", "limit": self._page_size}
        previous: set[str] = {after} if after else set()
        while True:
            page_params = dict(params, after=after) if after else params
            page = await self._requester.get_parsed(path, _parse_steps, page_params) or []
            if any(step.id in previous for step in page):
                _logger.warning("GET %s makes no progress after step %s; stopping", path, after)
                return
            for step in page:
                yield step
            if len(page) < self._page_size:
                return
            previous = {step.id for step in page}
            after = page[-1].id

    def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]:
        """Runs matching the filter's agents and time window, oldest first (after ``after``)."""
        start = (after.id, after.created_at) if after is not None else None
        return self._iter_runs(_aware(filt), start=start)

    async def _iter_runs(
        self, filt: StepFilter, *, start: tuple[str, datetime | None] | None
    ) -> AsyncIterator[Run]:
        base: dict[str, str | int | list[str]] = {"order": "asc", "limit": self._page_size}
        if len(filt.agent_ids) == 1:
            base["agent_id"] = filt.agent_ids[0]
        elif filt.agent_ids:
            base["agent_ids"] = list(filt.agent_ids)
        cursor_id, cursor_at = start if start is not None else (None, None)
        recent = _RecentIds([cursor_id] if cursor_id else [])
        skip_through: datetime | None = None  # after a full rescan: runs already passed
        rescanned = False
        while True:
            page: list[Run] | None
            if cursor_id is None:
                page = await self._runs_page(base, None) or []
            else:
                page = await self._runs_page(base, cursor_id)
                if page == [] and not self._cursor_known:
                    # Nothing after the cursor run, by a cursor parameter not seen working yet
                    # (a resume right after the first run, on a server with swapped cursors):
                    # the other parameter says whether there really is nothing more.
                    page = await self._other_cursor(base, cursor_id, cursor_at, recent) or []
                elif page is None or not _advances(page, recent, cursor_at):
                    page = await self._other_cursor(base, cursor_id, cursor_at, recent)
                if page:
                    self._cursor_known = True
            if page is None:
                # Neither cursor works from here (an unknown or broken cursor run): list again
                # from the first run, skipping what was passed, once per listing.
                if rescanned:
                    _logger.warning(
                        "GET %s makes no progress after run %s with after= or before=; "
                        "stopping this pass",
                        _RUNS_PATH,
                        cursor_id,
                    )
                    return
                _logger.warning(
                    "GET %s cannot page from run %s; listing again from the first run%s",
                    _RUNS_PATH,
                    cursor_id,
                    "" if cursor_at is not None else " (its time is unknown: runs may repeat)",
                )
                rescanned, skip_through, cursor_id = True, cursor_at, None
                recent = _RecentIds()
                continue
            if not page:
                return
            for run in page:
                recent.add(run.id)
                created = run.created_at
                if created is not None:
                    if filt.until is not None and created >= filt.until:
                        return
                    if skip_through is not None and created <= skip_through:
                        continue
                    if filt.since is not None and created <= filt.since:
                        continue
                if filt.agent_ids and run.agent_id not in filt.agent_ids:
                    continue
                yield run
            cursor_id, cursor_at = page[-1].id, page[-1].created_at

    async def _runs_page(
        self, base: Params, cursor_id: str | None, *, param: _Cursor | None = None
    ) -> list[Run] | None:
        """One page of runs; ``None`` when the cursor run is unknown to the server (404)."""
        params = dict(base)
        if cursor_id is not None:
            params[param or self._runs_cursor] = cursor_id
        # Without a cursor a 404 means "no runs route": an error, not an empty list.
        return await self._requester.get_parsed(
            _RUNS_PATH, _parse_runs, params, missing_ok=cursor_id is not None
        )

    async def _other_cursor(
        self,
        base: Params,
        cursor_id: str,
        cursor_at: datetime | None,
        recent: _RecentIds,
    ) -> list[Run] | None:
        """Try the other cursor parameter after one made no progress; ``None``: neither works."""
        other: _Cursor = "before" if self._runs_cursor == "after" else "after"
        page = await self._runs_page(base, cursor_id, param=other)
        if page is None or (page and not _advances(page, recent, cursor_at)):
            return None
        if not page:
            return page  # nothing either way: not a sign that the cursors are swapped
        if not self._swap_logged:
            self._swap_logged = True
            _logger.info(
                "GET %s cursors are swapped on this server (%s= made no progress); paging with %s=",
                _RUNS_PATH,
                self._runs_cursor,
                other,
            )
        self._runs_cursor = other
        return page


def _advances(page: list[Run], recent: _RecentIds, cursor_at: datetime | None) -> bool:
    """Whether a page moved forward: no run seen before, none older than the cursor run."""
    for run in page:
        if run.id in recent:
            return False
        if cursor_at is not None and run.created_at is not None and run.created_at < cursor_at:
            return False
    return True


def _parse_step(raw: bytes) -> Step:
    return parse_record(Step, raw)


def _parse_run(raw: bytes) -> Run:
    return parse_record(Run, raw)
