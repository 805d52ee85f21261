"""The one rate-limited logger: a repeated failure is logged once per interval, not per retry.

Why: during an outage (Letta down, a collector refusing) the same failure recurs every few
seconds; one line a minute, with how often it repeated, is as informative as hundreds of
identical lines and keeps the log readable. Repeats inside the interval still go to DEBUG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["DEFAULT_INTERVAL", "RateLimitedLog"]

#: Seconds between two log lines for the same key.
DEFAULT_INTERVAL: Final = 60.0
#: Distinct keys remembered before old ones are forgotten (keys may carry varying server text).
_MAX_KEYS: Final = 256


class RateLimitedLog:
    """Logs each key at most once per ``interval`` at its level; repeats go to DEBUG.

    Thread-safe: the sink logs from the threads its exports run in.

    Args:
        logger: where lines go.
        interval: seconds between two lines for one key.
        clock: monotonic seconds (tests pass a fake).
        count_repeats: when a key is logged again, say how many repeats were held back.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        count_repeats: bool = False,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._count = count_repeats
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    @property
    def interval(self) -> float:
        return self._interval

    def log(self, key: str, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` unless ``key`` was logged within the interval.

        Returns:
            True when the line went out at ``level`` (False: held back, sent to DEBUG).
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                held = -1
            else:
                held = self._held.pop(key, 0)
                if len(self._last) >= _MAX_KEYS:
                    self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
                    self._held = {k: n for k, n in self._held.items() if k in self._last}
                self._last[key] = now
        if held < 0:
            self._logger.debug(message, *args)
            return False
        if held and self._count:
            self._logger.log(
                level,
                message + " (and %d more times in the last %.0fs)",
                *args,
                held,
                self._interval,
            )
        else:
            self._logger.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: Any) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(key, logging.WARNING, message, *args)

    def reset(self) -> None:
        """Forget every key (after a recovery, the next failure is news again)."""
        with self._lock:
            self._last.clear()
            self._held.clear()
