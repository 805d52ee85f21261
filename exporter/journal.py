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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

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

_logger = logging.getLogger(__name__)

#: A frame whose CRC no longer matches (the disk changed it after the commit).
KIND_DAMAGED: Final = 0
#: A record as received (one JSON line, without its newline).
KIND_RECORD: Final = 1
#: A rejection made at reception (too large, timed out, truncated): see ``_socket``.
KIND_REJECTED: Final = 2

_MAGIC: Final = 0xA7
_HEADER: Final = struct.Struct("<BBII")  # magic, kind, length, crc
HEADER_SIZE: Final = _HEADER.size
_PREFIX: Final = struct.Struct("<BI")  # kind, length: what the CRC covers before the payload
_MAX_PAYLOAD: Final = 0xFFFFFFFF
_META: Final = "journal.json"
_SUFFIX: Final = ".seg"
_READ_CHUNK: Final = 1 << 20
_FAILURE_BACKOFF: Final = 1.0
#: Seconds between two saves of the acknowledged offset when no segment is freed.
_ACK_SAVE_INTERVAL: Final = 1.0


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


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed frame, as read back.

    Args:
        kind: :data:`KIND_RECORD` or :data:`KIND_REJECTED`.
        payload: its bytes.
        offset: where the frame starts.
        end: where the next one starts (resume here to read what follows).
    """

    kind: int
    payload: bytes
    offset: int
    end: int


def _frame_header(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_PREFIX.pack(kind, len(payload))))
    return _HEADER.pack(_MAGIC, kind, len(payload), crc)


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class _Scan:
    """What a segment scan found: the valid length and the ends of the frames past ``since``."""

    valid: int
    ends: list[int]
    torn: int


class Journal:
    """A durable append-only journal in ``directory`` (see the module docstring).

    Use :meth:`open` (it recovers in a thread); :meth:`aclose` commits what is queued.

    Args:
        directory: the journal directory (created).
        options: limits and the commit policy.
        on_commit: called on the event loop with the committed end offset after each fsync.
    """

    def __init__(
        self,
        directory: Path,
        options: JournalOptions,
        *,
        journal_id: str,
        acked: int,
        segments: list[_Segment],
        ends: array[int],
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.options = options
        self.journal_id = journal_id
        self._acked = acked
        self._segments = segments
        self._segments_lock = threading.Lock()
        self._ends = ends
        self._ends_head = 0
        self._end = segments[-1].base + segments[-1].size
        self._committed = self._end
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_ends: list[int] = []
        self._on_commit = on_commit
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._closing = False
        self._failed_at = 0.0
        self._saver: asyncio.Task[None] | None = None
        self._saved_at = time.monotonic()
        self._saved_ack = acked
        self._handle: IO[bytes] = segments[-1].path.open("ab")
        self._committer = asyncio.get_running_loop().create_task(self._commit_loop())

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
        journal_id, acked, segments, ends = await asyncio.to_thread(_recover, path)
        return cls(
            path,
            opts,
            journal_id=journal_id,
            acked=acked,
            segments=segments,
            ends=ends,
            on_commit=on_commit,
        )

    # --- state -----------------------------------------------------------------------------
    @property
    def acked(self) -> int:
        """The acknowledged offset: everything before it was delivered (durable)."""
        return self._acked

    @property
    def committed(self) -> int:
        """Everything before this offset is fsynced and readable."""
        return self._committed

    @property
    def end(self) -> int:
        """Where the next appended frame will start (queued frames included)."""
        return self._end

    def is_boundary(self, offset: int) -> bool:
        """Whether a frame starts at ``offset`` in the unacknowledged part (or it is the end)."""
        if offset == self._acked or offset == self._committed:
            return True
        index = bisect_right(self._ends, offset, lo=self._ends_head) - 1
        return index >= self._ends_head and self._ends[index] == offset

    @property
    def depth_bytes(self) -> int:
        """Bytes held and not yet acknowledged (queued, written or committed)."""
        return self._end - self._acked

    @property
    def depth_records(self) -> int:
        """Records held and not yet acknowledged."""
        return len(self._ends) - self._ends_head + len(self._pending_ends)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet fsynced (the caller's backpressure signal)."""
        return self._pending_bytes

    # --- writing ---------------------------------------------------------------------------
    def append(self, kind: int, payload: bytes) -> int:
        """Queue one frame for the next group commit; returns its end offset.

        The frame is durable once :attr:`committed` reaches the returned offset (see
        :meth:`wait_committed`). Never blocks.

        Raises:
            JournalFullError: the frame would take the journal past ``max_bytes``.
            JournalError: the journal is closed.
        """
        if self._closing:
            raise JournalError(str(self.directory), "closed")
        size = HEADER_SIZE + len(payload)
        if len(payload) > _MAX_PAYLOAD or self._end - self._acked + size > self.options.max_bytes:
            raise JournalFullError(self._end - self._acked, self.options.max_bytes, size)
        if self._pending_bytes + size > self.options.max_pending_bytes:
            raise JournalFullError(
                self._pending_bytes, self.options.max_pending_bytes, size, uncommitted=True
            )
        self._pending.append(_frame_header(kind, payload))
        self._pending.append(payload)
        self._pending_bytes += size
        self._end += size
        self._pending_ends.append(self._end)
        self._wake.set()
        return self._end

    async def wait_committed(self, offset: int) -> None:
        """Return once everything before ``offset`` is fsynced."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._committed >= offset or self._closed())

    async def wait_beyond(self, offset: int) -> None:
        """Return once something past ``offset`` is committed (or the journal closes)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._committed > offset or self._closed())

    def _closed(self) -> bool:
        return self._closing and not self._pending

    async def _commit_loop(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            if (
                self.options.commit_delay > 0
                and not self._closing
                and self._pending_bytes < self.options.max_batch_bytes
            ):
                await asyncio.sleep(self.options.commit_delay)
            batch, ends = self._pending, self._pending_ends
            self._pending, self._pending_ends = [], []
            size = self._pending_bytes
            try:
                await asyncio.to_thread(self._write, batch)
            except OSError as exc:
                # Not durable: put the batch back in front and try again; appends keep being
                # counted against max_bytes, so a dead disk ends in refusals, not in memory.
                self._pending[:0] = batch
                self._pending_ends[:0] = ends
                now = time.monotonic()
                if now - self._failed_at > 10:
                    self._failed_at = now
                    _logger.error(
                        "journal %s: cannot write (%s); %d bytes wait to be committed",
                        self.directory,
                        exc.strerror or exc,
                        self._pending_bytes,
                    )
                await asyncio.sleep(_FAILURE_BACKOFF)
                continue
            self._pending_bytes -= size
            self._ends.extend(ends)
            self._committed = ends[-1]
            if self._on_commit is not None:
                self._on_commit(self._committed)
            async with self._changed:
                self._changed.notify_all()

    def _write(self, batch: list[bytes]) -> None:
        """Write a batch to the active segment and fsync it (worker thread)."""
        segment = self._segments[-1]
        handle = self._handle
        try:
            handle.writelines(batch)
            handle.flush()
            if self.options.fsync:
                os.fsync(handle.fileno())
        except OSError:
            # Leave no half batch behind: the retry writes it again from the committed size.
            with contextlib.suppress(OSError):
                handle.close()
            with contextlib.suppress(OSError):
                os.truncate(segment.path, segment.size)
            self._handle = segment.path.open("ab")
            raise
        segment.size += sum(len(piece) for piece in batch)
        if segment.size >= self.options.segment_bytes:
            self._roll(segment.base + segment.size)

    def _roll(self, base: int) -> None:
        path = self.directory / f"{base:020d}{_SUFFIX}"
        new = path.open("ab")
        _fsync_dir(self.directory)
        old = self._handle
        self._handle = new
        old.close()
        with self._segments_lock:
            self._segments.append(_Segment(base, path, 0))

    # --- reading ---------------------------------------------------------------------------
    async def read(
        self, offset: int, *, max_records: int = 512, max_bytes: int = 8 << 20
    ) -> list[Entry]:
        """Committed frames from ``offset`` (a frame boundary), in a thread; ``[]`` at the end.

        At least one frame is returned when there is one, however large; else up to
        ``max_records`` frames or ``max_bytes`` of payload.
        """
        limit = self._committed
        if offset >= limit:
            return []
        return await asyncio.to_thread(self._read, offset, limit, max_records, max_bytes)

    def _read(self, offset: int, limit: int, max_records: int, max_bytes: int) -> list[Entry]:
        with self._segments_lock:
            segments = list(self._segments)
        bases = [s.base for s in segments]
        index = bisect_right(bases, offset) - 1
        if index < 0:
            raise JournalError(str(self.directory), f"offset {offset} was trimmed already")
        out: list[Entry] = []
        total = 0
        while index < len(segments) and offset < limit:
            segment = segments[index]
            # A closed segment ends at its valid size (a damaged stretch is skipped over).
            last = index + 1 == len(segments)
            seg_end = limit if last else min(limit, segment.base + segment.size)
            if not last and offset >= seg_end:
                offset = max(offset, segments[index + 1].base)
            if offset >= seg_end:
                index += 1
                continue
            with segment.path.open("rb") as handle:
                handle.seek(offset - segment.base)
                while offset < seg_end:
                    header = handle.read(HEADER_SIZE)
                    magic, kind, length, crc = _HEADER.unpack(header)
                    payload = handle.read(length)
                    if magic != _MAGIC or len(payload) != length:
                        raise JournalError(str(segment.path), f"no frame at offset {offset}")
                    if zlib.crc32(payload, zlib.crc32(_PREFIX.pack(kind, length))) != crc:
                        kind = KIND_DAMAGED  # changed on disk since it was committed
                    end = offset + HEADER_SIZE + length
                    out.append(Entry(kind, payload, offset, end))
                    offset = end
                    total += length
                    if len(out) >= max_records or total >= max_bytes:
                        return out
            index += 1
        return out

    # --- trimming --------------------------------------------------------------------------
    async def trim(self, offset: int) -> None:
        """Acknowledge everything before ``offset`` (delivered): segments before it are freed.

        An offset at or before the current acknowledgement changes nothing; one past the
        committed end is clamped to it. The acknowledged offset is saved to disk (awaited)
        before a segment is deleted, and otherwise at most every ``_ACK_SAVE_INTERVAL`` seconds
        and on close, in the background: the consumer's own checkpoint is the authority (reading
        from a saved position trims to it), so a crash between two saves only means the frames
        after the last saved offset are read again, with the same ids.
        """
        offset = min(offset, self._committed)
        if offset <= self._acked:
            return
        self._acked = offset
        head = bisect_right(self._ends, offset, lo=self._ends_head)
        self._ends_head = head
        if head > 4096 and head * 2 > len(self._ends):
            del self._ends[:head]
            self._ends_head = 0
        if len(self._segments) > 1 and self._segments[1].base <= offset:
            # A segment is freed: once per segment, so the caller may wait for the disk.
            if self._saver is not None:
                await self._saver
            await self._save()
        elif time.monotonic() - self._saved_at >= _ACK_SAVE_INTERVAL and (
            self._saver is None or self._saver.done()
        ):
            self._saver = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        self._saved_at = time.monotonic()
        try:
            await asyncio.to_thread(self._save_and_free, self._acked)
        except OSError as exc:
            _logger.error(
                "journal %s: cannot save the acknowledged offset (%s)",
                self.directory,
                exc.strerror or exc,
            )

    def _save_and_free(self, offset: int) -> None:
        if offset == self._saved_ack:
            return
        _write_meta(self.directory, self.journal_id, offset)
        self._saved_ack = offset
        with self._segments_lock:
            doomed = []
            while len(self._segments) > 1 and self._segments[1].base <= offset:
                doomed.append(self._segments.pop(0))
        for segment in doomed:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    # --- closing ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Commit what is queued, stop the committer and close the active segment."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._committer, timeout=30)
        async with self._changed:
            self._changed.notify_all()
        if self._saver is not None:
            await self._saver
        await self._save()
        self._handle.close()


# --- recovery (worker thread) ------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_meta(directory: Path, journal_id: str, acked: int) -> None:
    tmp = directory / (_META + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump({"journal_id": journal_id, "acked": acked}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(directory / _META)
    _fsync_dir(directory)


def _read_meta(directory: Path) -> tuple[str, int] | None:
    path = directory / _META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["journal_id"]), int(data["acked"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalError(str(path), f"unreadable ({exc})") from exc


def _scan(path: Path, base: int, since: int, *, last: bool) -> _Scan:
    """Check every frame of a segment; the ends of those past ``since`` are returned."""
    ends: list[int] = []
    pos = 0
    size = path.stat().st_size
    with path.open("rb") as handle:
        while pos < size:
            header = handle.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                break
            magic, kind, length, crc = _HEADER.unpack(header)
            if magic != _MAGIC or pos + HEADER_SIZE + length > size:
                break
            check = zlib.crc32(_PREFIX.pack(kind, length))
            remaining = length
            while remaining:
                chunk = handle.read(min(remaining, _READ_CHUNK))
                if not chunk:
                    break
                check = zlib.crc32(chunk, check)
                remaining -= len(chunk)
            if remaining or check != crc:
                break
            pos += HEADER_SIZE + length
            if base + pos > since:
                ends.append(base + pos)
    torn = size - pos
    if torn and not last:
        _logger.error(
            "journal segment %s: %d bytes after offset %d are damaged and cannot be read",
            path,
            torn,
            base + pos,
        )
    return _Scan(pos, ends, torn)


def _recover(directory: Path) -> tuple[str, int, list[_Segment], array[int]]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        meta = _read_meta(directory)
        files = sorted(directory.glob("*" + _SUFFIX))
    except OSError as exc:
        raise JournalError(str(directory), exc.strerror or str(exc)) from exc
    if meta is None:
        journal_id, acked = uuid.uuid4().hex, 0
        if files:
            acked = int(files[0].stem)
            _logger.warning("journal %s: no %s; reading from its oldest segment", directory, _META)
        _write_meta(directory, journal_id, acked)
    else:
        journal_id, acked = meta
    segments: list[_Segment] = []
    ends: array[int] = array("q")
    for i, path in enumerate(files):
        base = int(path.stem)
        next_base = int(files[i + 1].stem) if i + 1 < len(files) else None
        if next_base is not None and next_base <= acked:
            path.unlink()  # wholly acknowledged; a trim was cut short
            continue
        scan = _scan(path, base, acked, last=next_base is None)
        if next_base is None and scan.torn:
            _logger.warning(
                "journal segment %s: cut a torn tail of %d bytes at offset %d (a write "
                "interrupted by a crash; that record was never committed)",
                path,
                scan.torn,
                base + scan.valid,
            )
            with path.open("r+b") as handle:
                handle.truncate(scan.valid)
                os.fsync(handle.fileno())
        segments.append(_Segment(base, path, scan.valid))
        ends.extend(scan.ends)
    if not segments:
        path = directory / f"{acked:020d}{_SUFFIX}"
        path.touch()
        _fsync_dir(directory)
        segments.append(_Segment(acked, path, 0))
    first = segments[0]
    if acked < first.base:
        acked = first.base
    tail = segments[-1]
    if acked > tail.base + tail.size:
        raise JournalError(str(directory), f"acknowledged offset {acked} is past the journal's end")
    return journal_id, acked, segments, ends
