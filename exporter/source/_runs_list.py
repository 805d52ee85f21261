"""Paging through ``GET /v1/runs/``, oldest first, whichever cursor parameter the server honours.

The runs list of Letta 0.16.8 has its cursors swapped (``order=asc&after=X`` answers the runs
*before* X). A page that makes no progress (a run already seen, or older than the cursor) is
detected; the other cursor parameter is tried, and used from then on if it progresses. When
neither does, the listing starts again from the first run once, then stops cleanly with a
warning instead of looping forever. An item of a page that does not fit its schema is reported
and left out (:func:`parse_page`), so one bad record cannot stop the listing at its page.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, Final, Literal

from .._ratelimit import RateLimitedLog
from ..errors import RecordInvalidError
from ..models import Run, Step, load_json, parse_record, parse_records
from ._http import Params, Requester
from ._types import StepFilter

__all__ = ["RunsListing", "parse_page", "parse_runs", "parse_steps"]

_logger = logging.getLogger(__name__)

Cursor = Literal["after", "before"]

#: How many recent run ids a listing remembers to notice a cursor going round in circles.
_RECENT_RUN_IDS: Final = 4096
_RUNS_PATH: Final = "/v1/runs/"


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


_skipped_log = RateLimitedLog(_logger)


def parse_page(model: type[Step] | type[Run], raw: bytes) -> list[Any]:
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


def parse_steps(raw: bytes) -> list[Step]:
    return parse_page(Step, raw)


def parse_runs(raw: bytes) -> list[Run]:
    return parse_page(Run, raw)


class RunsListing:
    """Pages of runs, oldest first; remembers which cursor parameter works on this server.

    Args:
        requester: the GET layer.
        page_size: runs asked per page.
    """

    def __init__(self, requester: Requester, *, page_size: int) -> None:
        self._requester = requester
        self._page_size = page_size
        self._runs_cursor: Cursor = "after"
        self._swap_logged = False
        self._cursor_known = False  # a page after a cursor came back with runs

    async def iterate(
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
        self, base: Params, cursor_id: str | None, *, param: Cursor | None = None
    ) -> list[Run] | None:
        """One page of runs; ``None`` when the cursor run is unknown to the server (404)."""
        params = dict(base)
        if cursor_id is not None:
            params[param or self._runs_cursor] = cursor_id
        # Without a cursor a 404 means "no runs route": an error, not an empty list.
        return await self._requester.get_parsed(
            _RUNS_PATH, parse_runs, params, missing_ok=cursor_id is not None
        )

    async def _other_cursor(
        self,
        base: Params,
        cursor_id: str,
        cursor_at: datetime | None,
        recent: _RecentIds,
    ) -> list[Run] | None:
        """Try the other cursor parameter after one made no progress; ``None``: neither works."""
        other: Cursor = "before" if self._runs_cursor == "after" else "after"
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
