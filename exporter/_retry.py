"""The one backoff formula and the one ``Retry-After`` parser, for both hops (Letta, collector).

Backoff is exponential with full jitter, so many exporters restarted together do not hammer a
recovering server in lockstep. A server's ``Retry-After`` is a floor, not a replacement: the
jittered draw is added on top of it, so a fleet told "come back in 30 s" does not come back in
the same millisecond, and nobody comes back early.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["Jitter", "backoff_delay", "parse_retry_after", "wait_or_stop"]

#: A draw in ``[low, high]``; ``random.uniform`` by default, a fixed value in tests.
Jitter = Callable[[float, float], float]

#: ``2**62`` already exceeds any cap: larger exponents only risk an overflow.
_MAX_EXPONENT: Final = 62


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    retry_after_cap: float | None = None,
    jitter: Jitter = random.uniform,
) -> float:
    """The wait before retry number ``attempt`` (0-based).

    Args:
        attempt: how many retries came before this one.
        initial: the first draw's upper bound, in seconds; doubled each retry.
        maximum: the cap of the computed draw.
        retry_after: what the server asked for, in seconds (``None``: it said nothing).
        retry_after_cap: the longest ``Retry-After`` honoured (a server asking for an hour is
            more likely wrong than right); ``None``: no cap.
        jitter: the random draw (tests pass a fixed one).

    Returns:
        ``uniform(0, min(maximum, initial * 2**attempt))``, plus the server's ``Retry-After``
        (capped) when it sent one.
    """
    ceiling = min(maximum, initial * (2 ** min(max(attempt, 0), _MAX_EXPONENT)))
    drawn = jitter(0.0, max(ceiling, 0.0))
    if retry_after is None:
        return drawn
    floor = max(retry_after, 0.0)
    if retry_after_cap is not None:
        floor = min(floor, retry_after_cap)
    return floor + drawn


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value: delay-seconds or an HTTP-date.

    Fractional seconds are accepted (some servers send them); a negative delay or a date in the
    past means "now". A date without a zone is read as UTC (HTTP dates are GMT by definition).

    Args:
        value: the header value, or ``None`` when absent.
        now: the current Unix time for the date form (default: the clock).

    Returns:
        Non-negative seconds, or ``None`` when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first; whether it was set.

    The one wait of every retry and poll: a shutdown never waits out a backoff or a poll.
    """
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True
