"""The one-shot job's loop around the worker's passes: read again after a failed pass while
passes get further, wait for traces not written yet (up to the settle time), and at the end
ship the parents of every run touched, finished or not.

An export against a flaky Letta keeps going while calls succeed; it ends at once on what no
retry can fix (a refused key, a wrong source setting), and after several passes in a row that
got no further.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from ._ratelimit import RateLimitedLog
from .checkpoint import StreamState
from .errors import RecordInvalidError, SourceError, SourceHTTPError, Stopped
from .parents import ParentSpans
from .summary import ExportSummary

__all__ = ["OneShotExport"]

_logger = logging.getLogger(__name__)

#: One-shot passes in a row that may fail without moving the cursor before the export gives up
#: (more than the passes the API source lets a step's trace fail before it reports the step as
#: unreadable and goes on, ``POISON_PASSES`` (5), and enough that a storm where most calls fail
#: but some succeed does not end the export: at 70% errors a pass gets nowhere about one time
#: in three).
_STALLED_PASSES: Final = 10
#: Seconds a one-shot export waits before reading again after a failed pass.
_RETRY_PASS_SECONDS: Final = 1.0
#: Letta answers that no retry of the pass can fix: a refused key, a forbidden route.
_REFUSED: Final = frozenset({401, 403, 407})


class OneShotExport:
    """Runs passes until the window is exported.

    Args:
        run_pass: one pass of the worker, until the source is caught up.
        state: the stream state (its cursor and pending steps).
        parents: ships the parents of every open run at the end.
        total: the worker's running totals (the end's parents are added to it).
        stop: set to stop; waits end on it.
        settle_seconds: how long a step's trace may take to be written.
        clock: Unix seconds.
        sleep: waits (returns early when ``stop`` is set).
    """

    def __init__(
        self,
        *,
        run_pass: Callable[[], Awaitable[ExportSummary]],
        state: StreamState,
        parents: ParentSpans,
        total: ExportSummary,
        stop: asyncio.Event,
        settle_seconds: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._run_pass = run_pass
        self._state = state
        self._parents = parents
        self._total = total
        self._stop = stop
        self._settle = settle_seconds
        self._clock = clock
        self._sleep = sleep
        self._log = RateLimitedLog(_logger)

    async def export_window(self, *, poll_seconds: float) -> ExportSummary:
        """Export everything, wait for the traces still pending, then ship every parent.

        Raises:
            Stopped: shutdown was requested while a batch was undelivered.
            UndeliveredError: the collector did not accept a batch before the deadline.
            SourceError: the source failed.
        """
        await self._pass_until_through()
        while self._state.pending and not self._stop.is_set():
            await self._sleep(min(poll_seconds, self._next_settle()))
            if self._stop.is_set():
                break
            await self._pass_until_through()
        if not self._stop.is_set():
            final = ExportSummary()
            await self._parents.ship_finished(final, final=True)
            self._total.add(final)
        self._total.pending = len(self._state.pending)
        return self._total

    async def _pass_until_through(self) -> None:
        """A pass, read again from the checkpoint after a failure while passes move the cursor.

        Raises:
            SourceError: Letta refused the key, the source's configuration is wrong (a
                database login refused, a missing table), or several passes in a row failed without
                moving the cursor (the message says how far the export got).
        """
        stalled = 0
        while True:
            cursor = self._state.cursor
            try:
                await self._run_pass()
                return
            except (SourceError, RecordInvalidError) as exc:
                if isinstance(exc, SourceHTTPError) and exc.status_code in _REFUSED:
                    raise
                if getattr(exc, "configuration", False):
                    raise  # a setting must change (the database refused the login): exit 2
                stalled = 0 if self._state.cursor != cursor else stalled + 1
                if stalled >= _STALLED_PASSES or self._stop.is_set():
                    total = self._total
                    raise SourceError(
                        f"{exc} (gave up after {stalled} passes in a row that got no further; "
                        f"{total.exported} traces delivered, {total.invalid} reported unreadable)"
                    ) from exc
                self._log.warning(
                    "pass",
                    "pass failed (%s); reading again from the checkpoint (%d traces delivered "
                    "so far)",
                    exc,
                    self._total.exported,
                )
                await self._sleep(_RETRY_PASS_SECONDS)
                if self._stop.is_set():
                    raise Stopped from exc

    def _next_settle(self) -> float:
        now = self._clock()
        waits = [p.first_seen + self._settle - now for p in self._state.pending.values()]
        return max(0.05, min(waits, default=0.05))
