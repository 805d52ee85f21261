"""Log lines for what the converter had to leave out, shorten or distrust, rate-limited.

The converter logs nothing (it is pure); it says on each span what it did
(:func:`~exporter.convert.conversion_notes`). The worker's intake and the file export log those
notes here, one line per kind of note and minute at most, so a backlog of records with the same
flaw gives one line (with a count of the repeats), not one per record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan

from ._ratelimit import RateLimitedLog
from .convert import conversion_notes

__all__ = ["ConversionNotes"]

_logger = logging.getLogger(__name__)

#: Characters of a note that name its kind (the text before the first colon, at most).
_KEY_CHARS: Final = 80


class ConversionNotes:
    """Logs the conversion notes of each span, rate-limited per kind of note.

    Args:
        logger: where the lines go.
        interval: seconds between two lines of one kind.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        logger: logging.Logger = _logger,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = RateLimitedLog(logger, interval=interval, clock=clock, count_repeats=True)

    def log(self, span: ReadableSpan, record_id: str) -> int:
        """Log what the converter said about ``span`` (made from record ``record_id``).

        Returns:
            How many notes the span had.
        """
        notes = conversion_notes(span)
        for note in notes:
            kind = note.split(":", 1)[0][:_KEY_CHARS]
            self._log.warning(f"convert:{kind}", "trace %s: %s", record_id or "<no id>", note)
        return len(notes)
