"""The journal's acknowledgement bookkeeping: how far the consumer has delivered, the ends of
the frames held past it (for the depth gauge and the boundary check), and the saving of the
acknowledged offset that frees the segments before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from bisect import bisect_right
from typing import Final

from ._journal_segments import SegmentFiles, write_meta

# The journal's own logger: these lines are the journal's.
_logger = logging.getLogger("exporter.journal")

#: Seconds between two saves of the acknowledged offset when no segment is freed.
ACK_SAVE_INTERVAL: Final = 1.0
#: Past this many acknowledged ends (and half the array), the array is compacted.
_COMPACT_AFTER: Final = 4096


class AckBook:
    """The acknowledged offset and the ends of the committed frames after it.

    The ends are a packed array (8 bytes a record) with a moving head, compacted now and then,
    so the memory stays flat however long the journal runs.

    Args:
        files: the segment files (the oldest are freed past a saved acknowledgement).
        journal_id: saved with the offset.
        acked: the acknowledged offset found on open.
        ends: the ends of the committed frames after it.
    """

    def __init__(self, files: SegmentFiles, journal_id: str, acked: int, ends: array[int]) -> None:
        self._files = files
        self._journal_id = journal_id
        self.acked = acked
        self._ends = ends
        self._head = 0
        self._saver: asyncio.Task[None] | None = None
        self._saved_at = time.monotonic()
        self._saved_ack = acked

    @property
    def records(self) -> int:
        """Committed records not yet acknowledged."""
        return len(self._ends) - self._head

    def add(self, ends: list[int]) -> None:
        """Frames ending at ``ends`` were committed."""
        self._ends.extend(ends)

    def is_boundary(self, offset: int, committed: int) -> bool:
        """Whether a frame starts at ``offset`` in the unacknowledged part (or it is the end)."""
        if offset == self.acked or offset == committed:
            return True
        index = bisect_right(self._ends, offset, lo=self._head) - 1
        return index >= self._head and self._ends[index] == offset

    async def advance(self, offset: int) -> None:
        """Acknowledge everything before ``offset`` (at most the committed end; see
        ``Journal.trim`` for when it is saved)."""
        if offset <= self.acked:
            return
        self.acked = offset
        head = bisect_right(self._ends, offset, lo=self._head)
        self._head = head
        if head > _COMPACT_AFTER and head * 2 > len(self._ends):
            del self._ends[:head]
            self._head = 0
        if self._files.frees(offset):
            # A segment is freed: once per segment, so the caller may wait for the disk.
            if self._saver is not None:
                await self._saver
            await self._save()
        elif time.monotonic() - self._saved_at >= ACK_SAVE_INTERVAL and (
            self._saver is None or self._saver.done()
        ):
            self._saver = asyncio.get_running_loop().create_task(self._save())

    async def close(self) -> None:
        """Wait for a save under way, then save the latest acknowledgement."""
        if self._saver is not None:
            await self._saver
        await self._save()

    async def _save(self) -> None:
        self._saved_at = time.monotonic()
        try:
            await asyncio.to_thread(self._save_and_free, self.acked)
        except OSError as exc:
            _logger.error(
                "journal %s: cannot save the acknowledged offset (%s)",
                self._files.directory,
                exc.strerror or exc,
            )

    def _save_and_free(self, offset: int) -> None:
        if offset == self._saved_ack:
            return
        write_meta(self._files.directory, self._journal_id, offset)
        self._saved_ack = offset
        self._files.free_before(offset)
