"""Retry policy for Letta calls: which answers are worth another try, and how long to wait.

This is the one retry layer on the Letta hop (the worker and the sink add none of their own).
Waits are exponential with full jitter, so many exporters restarted together do not hammer a
recovering server in lockstep; a ``Retry-After`` header overrides the computed wait.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["RetryPolicy", "SourceStats"]

#: Statuses that say "try again later"; every other 4xx is final (retrying cannot fix it).
_RETRYABLE: Final = frozenset({429, 500, 502, 503, 504})

#: Longest wait a server's Retry-After can ask for; beyond this we would rather fail loudly.
_MAX_RETRY_AFTER: Final = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed Letta calls are retried.

    Args:
        max_retries: retries after the first attempt (0: never retry).
        initial_backoff: the first wait's upper bound, in seconds; doubled each retry.
        max_backoff: the cap of the computed wait, in seconds (a larger ``Retry-After`` is still
            honoured, up to five minutes).
    """

    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def backoff(self, retry: int, *, retry_after: float | None = None) -> float:
        """The wait before retry number ``retry`` (0-based).

        Full jitter: a uniform draw in ``[0, min(max_backoff, initial * 2**retry)]``. A server's
        ``Retry-After`` wins over the draw, because the server knows when it will recover.
        """
        if retry_after is not None:
            return min(retry_after, max(self.max_backoff, _MAX_RETRY_AFTER))
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** min(retry, 62)))
        return random.uniform(0.0, ceiling)


@dataclass(slots=True)
class SourceStats:
    """Live counters of the Letta client, for logs and Prometheus metrics.

    Attributes:
        requests: HTTP requests sent (each retry counts).
        retries: requests sent again after a retryable failure.
        failures: calls that failed for good (an error was raised to the caller).
        backoff_seconds: total time spent waiting between retries.
        in_flight: requests being sent right now.
        max_in_flight: the most requests ever in flight at once.
    """

    requests: int = 0
    retries: int = 0
    failures: int = 0
    backoff_seconds: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0


def is_retryable(status_code: int) -> bool:
    """Whether an HTTP status is worth another try."""
    return status_code in _RETRYABLE


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header: delay-seconds or an HTTP-date.

    Fractional seconds are accepted (some servers send them). A date in the past means "now".

    Returns:
        The wait in seconds, or ``None`` when the header is absent or unreadable.
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
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is unreadable
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(delta, 0.0)
