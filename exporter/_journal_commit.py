"""The journal's group commit: frames queued by ``append`` are written and fsynced in batches by
one task, the disk work in a thread, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from ._journal_segments import HEADER_SIZE, SegmentFiles, frame_header

# The journal's own logger: these lines are the journal's.
_logger = logging.getLogger("exporter.journal")

_FAILURE_BACKOFF: Final = 1.0
#: Seconds between two log lines about a disk that does not take the writes.
_FAILURE_REPORT_INTERVAL: Final = 10.0


class GroupCommit:
    """The frames not yet on disk and the committer task that writes them.

    Args:
        files: where the batches are written.
        commit_delay: seconds the committer waits for more frames before an fsync (0: none).
        max_batch_bytes: a batch is committed at once when it reaches this size.
        on_durable: called on the event loop with the ends of the frames of each fsynced
            batch, before :attr:`committed` moves past them.
        on_commit: called on the event loop with the committed end offset after each fsync.
    """

    def __init__(
        self,
        files: SegmentFiles,
        *,
        commit_delay: float,
        max_batch_bytes: int,
        on_durable: Callable[[list[int]], None],
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._files = files
        self._commit_delay = commit_delay
        self._max_batch_bytes = max_batch_bytes
        self._on_durable = on_durable
        self._on_commit = on_commit
        self.end = files.end
        self.committed = self.end
        self.closing = False
        self._pending: list[bytes] = []
        self._pending_ends: list[int] = []
        self.pending_bytes = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._failed_at = 0.0
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def pending_records(self) -> int:
        """Frames queued and not yet fsynced."""
        return len(self._pending_ends)

    def queue(self, kind: int, payload: bytes) -> int:
        """Queue one frame (the caller checked the limits); returns its end offset."""
        self._pending.append(frame_header(kind, payload))
        self._pending.append(payload)
        self.pending_bytes += HEADER_SIZE + len(payload)
        self.end += HEADER_SIZE + len(payload)
        self._pending_ends.append(self.end)
        self._wake.set()
        return self.end

    async def wait_committed(self, offset: int) -> None:
        """Return once everything before ``offset`` is fsynced."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.committed >= offset or self._closed())

    async def wait_beyond(self, offset: int) -> None:
        """Return once something past ``offset`` is committed (or the journal closes)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.committed > offset or self._closed())

    def _closed(self) -> bool:
        return self.closing and not self._pending

    async def close(self) -> None:
        """Commit what is queued, stop the committer and wake every waiter."""
        self.closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=30)
        async with self._changed:
            self._changed.notify_all()

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            if (
                self._commit_delay > 0
                and not self.closing
                and self.pending_bytes < self._max_batch_bytes
            ):
                await asyncio.sleep(self._commit_delay)
            batch, ends = self._pending, self._pending_ends
            self._pending, self._pending_ends = [], []
            size = self.pending_bytes
            try:
                await asyncio.to_thread(self._files.write, batch)
            except OSError as exc:
                # Not durable: put the batch back in front and try again; appends keep being
                # counted against max_bytes, so a dead disk ends in refusals, not in memory.
                self._pending[:0] = batch
                self._pending_ends[:0] = ends
                self._report_failure(exc)
                await asyncio.sleep(_FAILURE_BACKOFF)
                continue
            self.pending_bytes -= size
            self._on_durable(ends)
            self.committed = ends[-1]
            if self._on_commit is not None:
                self._on_commit(self.committed)
            async with self._changed:
                self._changed.notify_all()

    def _report_failure(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._failed_at > _FAILURE_REPORT_INTERVAL:
            self._failed_at = now
            _logger.error(
                "journal %s: cannot write (%s); %d bytes wait to be committed",
                self._files.directory,
                exc.strerror or exc,
                self.pending_bytes,
            )
