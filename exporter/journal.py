"""A durable, bounded, append-only journal of received records (segment files on disk).

Why: a pushed record has no second chance (Letta's socket sender never waits for an answer), so
the exporter counts a record as received only once it is on disk, and ships spans from here.

Layout of the directory::

    journal.json               {"journal_id": ..., "acked": N}  (written by replace, fsynced)
    00000000000000000000.seg   frames from logical offset 0
    00000000000000052311.seg   frames from logical offset 52311 (the file name is its base)

Offsets are logical byte positions over the whole stream (a segment's base plus the position in
it), so they only grow, survive a restart and name a record boundary. A frame is a 10-byte header
(magic, kind, payload length, CRC-32 of kind, length and payload) followed by the payload.

* **Group commit.** :meth:`Journal.append` only queues a frame; one committer task waits up to
  ``commit_delay`` for more, then writes the whole batch and fsyncs it once, in a thread (the
  event loop never blocks on the disk). Readers see a frame only once it is fsynced.
* **Recovery.** On open, every frame after the acknowledged offset is checked (length and CRC);
  a torn tail (a kill -9 or power loss in the middle of a write) is cut off the last segment and
  logged; every complete frame is read again.
* **Bounded.** The depth is ``end - acked`` bytes (frames queued, written or not yet
  acknowledged). An append that would pass ``max_bytes`` raises :class:`JournalFullError`; the
  caller counts and reports it. Nothing waits on the collector, and nothing is dropped silently.
* **Trim.** :meth:`Journal.trim` records how far the consumer has delivered (durably) and deletes
  the segments that lie wholly before it. The disk use is the depth plus at most one segment.

Memory stays flat: nothing but queued frames (bounded by ``max_pending_bytes`` through the
caller's backpressure) and one read batch is held; the record offsets of the unacknowledged
frames are kept as a packed array (8 bytes a record) for the depth gauge.

The parts: ``_journal_segments`` (frames, segment files, recovery), ``_journal_commit`` (the
group commit) and ``_journal_acks`` (the acknowledged offset and trim); :class:`Journal` composes
them and checks the limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._journal_acks import AckBook
from ._journal_commit import GroupCommit
from ._journal_segments import (
    HEADER_SIZE,
    KIND_DAMAGED,
    KIND_RECORD,
    KIND_REJECTED,
    MAX_PAYLOAD,
    Entry,
    Recovered,
    SegmentFiles,
    recover,
)
from .errors import ExporterError, JournalError

__all__ = [
    "KIND_DAMAGED",
    "KIND_RECORD",
    "KIND_REJECTED",
    "Entry",
    "Journal",
    "JournalError",
    "JournalFullError",
    "JournalOptions",
]


class JournalFullError(ExporterError):
    """An append would take the journal past its size limit (the record is refused).

    Args:
        depth: bytes held now (not yet acknowledged), or queued for the disk (``uncommitted``).
        limit: the configured maximum.
        size: the size of the refused frame.
        uncommitted: the disk is not keeping up (the queue of writes is full), rather than the
            collector (the frames written and not yet delivered).
    """

    def __init__(self, depth: int, limit: int, size: int, *, uncommitted: bool = False) -> None:
        what = "bytes waiting for the disk" if uncommitted else "bytes held"
        super().__init__(f"journal full: {depth} of {limit} {what}, {size} more refused")
        self.depth = depth
        self.limit = limit
        self.size = size
        self.uncommitted = uncommitted


@dataclass(frozen=True, slots=True)
class JournalOptions:
    """How the journal commits and how big it may grow.

    Args:
        max_bytes: the most unacknowledged bytes held; appends past it are refused.
        segment_bytes: a segment is closed and a new one started past this size.
        commit_delay: seconds the committer waits for more frames before an fsync (0: none).
        max_batch_bytes: a batch is committed at once when it reaches this size.
        max_pending_bytes: the most bytes queued and not yet fsynced; past it appends are
            refused too (a disk that stopped taking writes must not fill the memory instead).
        fsync: ``False`` only for tests and benchmarks that measure without the disk.
    """

    max_bytes: int = 2 << 30
    segment_bytes: int = 64 << 20
    commit_delay: float = 0.005
    max_batch_bytes: int = 8 << 20
    max_pending_bytes: int = 256 << 20
    fsync: bool = True


class Journal:
    """A durable append-only journal in ``directory`` (see the module docstring).

    Use :meth:`open` (it recovers in a thread); :meth:`aclose` commits what is queued.

    Args:
        directory: the journal directory (created).
        options: limits and the commit policy.
        recovered: what the recovery found in ``directory``.
        on_commit: called on the event loop with the committed end offset after each fsync.
    """

    def __init__(
        self,
        directory: Path,
        options: JournalOptions,
        recovered: Recovered,
        *,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.options = options
        self.journal_id = recovered.journal_id
        self._files = SegmentFiles(
            directory, recovered.segments, segment_bytes=options.segment_bytes, fsync=options.fsync
        )
        self._acks = AckBook(self._files, recovered.journal_id, recovered.acked, recovered.ends)
        self._commit = GroupCommit(
            self._files,
            commit_delay=options.commit_delay,
            max_batch_bytes=options.max_batch_bytes,
            on_durable=self._acks.add,
            on_commit=on_commit,
        )

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        directory: Path | str,
        options: JournalOptions | None = None,
        *,
        on_commit: Callable[[int], None] | None = None,
    ) -> Journal:
        """Open (or create) the journal, cutting a torn tail and re-reading every full frame.

        Raises:
            JournalError: the directory cannot be created or read.
        """
        opts = options or JournalOptions()
        path = Path(directory)
        recovered = await asyncio.to_thread(recover, path)
        return cls(path, opts, recovered, on_commit=on_commit)

    # --- state -----------------------------------------------------------------------------
    @property
    def acked(self) -> int:
        """The acknowledged offset: everything before it was delivered (durable)."""
        return self._acks.acked

    @property
    def committed(self) -> int:
        """Everything before this offset is fsynced and readable."""
        return self._commit.committed

    @property
    def end(self) -> int:
        """Where the next appended frame will start (queued frames included)."""
        return self._commit.end

    def is_boundary(self, offset: int) -> bool:
        """Whether a frame starts at ``offset`` in the unacknowledged part (or it is the end)."""
        return self._acks.is_boundary(offset, self._commit.committed)

    @property
    def depth_bytes(self) -> int:
        """Bytes held and not yet acknowledged (queued, written or committed)."""
        return self._commit.end - self._acks.acked

    @property
    def depth_records(self) -> int:
        """Records held and not yet acknowledged."""
        return self._acks.records + self._commit.pending_records

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet fsynced (the caller's backpressure signal)."""
        return self._commit.pending_bytes

    # --- writing ---------------------------------------------------------------------------
    def append(self, kind: int, payload: bytes) -> int:
        """Queue one frame for the next group commit; returns its end offset.

        The frame is durable once :attr:`committed` reaches the returned offset (see
        :meth:`wait_committed`). Never blocks.

        Raises:
            JournalFullError: the frame would take the journal past ``max_bytes``.
            JournalError: the journal is closed.
        """
        commit = self._commit
        if commit.closing:
            raise JournalError(str(self.directory), "closed")
        size = HEADER_SIZE + len(payload)
        depth = self.depth_bytes
        if len(payload) > MAX_PAYLOAD or depth + size > self.options.max_bytes:
            raise JournalFullError(depth, self.options.max_bytes, size)
        if commit.pending_bytes + size > self.options.max_pending_bytes:
            raise JournalFullError(
                commit.pending_bytes, self.options.max_pending_bytes, size, uncommitted=True
            )
        return commit.queue(kind, payload)

    async def wait_committed(self, offset: int) -> None:
        """Return once everything before ``offset`` is fsynced."""
        await self._commit.wait_committed(offset)

    async def wait_beyond(self, offset: int) -> None:
        """Return once something past ``offset`` is committed (or the journal closes)."""
        await self._commit.wait_beyond(offset)

    # --- reading ---------------------------------------------------------------------------
    async def read(
        self, offset: int, *, max_records: int = 512, max_bytes: int = 8 << 20
    ) -> list[Entry]:
        """Committed frames from ``offset`` (a frame boundary), in a thread; ``[]`` at the end.

        At least one frame is returned when there is one, however large; else up to
        ``max_records`` frames or ``max_bytes`` of payload.
        """
        limit = self._commit.committed
        if offset >= limit:
            return []
        return await asyncio.to_thread(self._files.read, offset, limit, max_records, max_bytes)

    # --- trimming --------------------------------------------------------------------------
    async def trim(self, offset: int) -> None:
        """Acknowledge everything before ``offset`` (delivered): segments before it are freed.

        An offset at or before the current acknowledgement changes nothing; one past the
        committed end is clamped to it. The acknowledged offset is saved to disk (awaited)
        before a segment is deleted, and otherwise at most every second and on close, in the
        background: the consumer's own checkpoint is the authority (reading from a saved
        position trims to it), so a crash between two saves only means the frames after the
        last saved offset are read again, with the same ids.
        """
        await self._acks.advance(min(offset, self._commit.committed))

    # --- closing ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Commit what is queued, stop the committer and close the active segment."""
        if self._commit.closing:
            return
        await self._commit.close()
        await self._acks.close()
        self._files.close()
