"""Retry policy for Letta calls: which answers are worth another try, and how long to wait.

This is the one retry layer on the Letta hop (the worker and the sink add none of their own).
The wait itself is :func:`exporter._retry.backoff_delay`, shared with the collector hop: full
jitter, with a server's ``Retry-After`` as a floor under it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from .._retry import Jitter, backoff_delay

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
        jitter: the random draw (tests pass a fixed one).
    """

    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: Jitter = field(default=random.uniform, compare=False, repr=False)

    def backoff(self, retry: int, *, retry_after: float | None = None) -> float:
        """The wait before retry number ``retry`` (0-based).

        Full jitter: a uniform draw in ``[0, min(max_backoff, initial * 2**retry)]``. A server's
        ``Retry-After`` is a floor under the draw: the server knows when it will recover.
        """
        return backoff_delay(
            retry,
            initial=self.initial_backoff,
            maximum=self.max_backoff,
            retry_after=retry_after,
            retry_after_cap=max(self.max_backoff, _MAX_RETRY_AFTER),
            jitter=self.jitter,
        )


@dataclass(slots=True)
class SourceStats:
    """Live counters of the Letta client, for logs and Prometheus metrics.

    Attributes:
        requests: HTTP requests sent (each retry counts).
        retries: requests sent again after a retryable failure.
        failures: calls that failed for good (an error was raised to the caller).
        in_flight: requests being sent right now.
        max_in_flight: the most requests ever in flight at once.
    """

    requests: int = 0
    retries: int = 0
    failures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def is_retryable(status_code: int) -> bool:
    """Whether an HTTP status is worth another try."""
    return status_code in _RETRYABLE
