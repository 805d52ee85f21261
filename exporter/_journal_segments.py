"""The journal's segment files: frame encoding and CRC, the writer of the active segment, the
reader of committed frames, and the recovery of a directory on open (torn-tail cut).

A frame is a 10-byte header (magic, kind, payload length, CRC-32 of kind, length and payload)
followed by the payload. A segment file is named by the logical offset of its first frame.
Everything here runs in a worker thread (the journal calls it through ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from .errors import JournalError

_logger = logging.getLogger("exporter.journal")

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
MAX_PAYLOAD: Final = 0xFFFFFFFF
META: Final = "journal.json"
_SUFFIX: Final = ".seg"
_READ_CHUNK: Final = 1 << 20


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


def frame_header(kind: int, payload: bytes) -> bytes:
    """The header that goes before ``payload`` on disk."""
    crc = zlib.crc32(payload, zlib.crc32(_PREFIX.pack(kind, len(payload))))
    return _HEADER.pack(_MAGIC, kind, len(payload), crc)


@dataclass(slots=True)
class Segment:
    """One segment file: its base offset and its valid (written and fsynced) size."""

    base: int
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """What :func:`recover` found in a journal directory."""

    journal_id: str
    acked: int
    segments: list[Segment]
    ends: array[int]


@dataclass(frozen=True, slots=True)
class _Scan:
    """What a segment scan found: the valid length and the ends of the frames past ``since``."""

    valid: int
    ends: list[int]
    torn: int


class SegmentFiles:
    """The segment files of one journal: the active one is appended to, every one is read.

    The list of segments is shared between the writer (a roll adds one), the reader and the
    trim (which frees the oldest), each in a thread of its own, hence the lock.

    Args:
        directory: the journal directory.
        segments: the segments found on open, oldest first (the last is the active one).
        segment_bytes: a segment is closed and a new one started past this size.
        fsync: ``False`` only for tests and benchmarks that measure without the disk.
    """

    def __init__(
        self, directory: Path, segments: list[Segment], *, segment_bytes: int, fsync: bool
    ) -> None:
        self.directory = directory
        self._segments = segments
        self._lock = threading.Lock()
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._handle: IO[bytes] = segments[-1].path.open("ab")

    @property
    def end(self) -> int:
        """Where the valid part of the active segment ends."""
        last = self._segments[-1]
        return last.base + last.size

    def write(self, batch: list[bytes]) -> None:
        """Write a batch to the active segment and fsync it (worker thread)."""
        segment = self._segments[-1]
        handle = self._handle
        try:
            handle.writelines(batch)
            handle.flush()
            if self._fsync:
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
        if segment.size >= self._segment_bytes:
            self._roll(segment.base + segment.size)

    def _roll(self, base: int) -> None:
        path = self.directory / f"{base:020d}{_SUFFIX}"
        new = path.open("ab")
        fsync_dir(self.directory)
        old = self._handle
        self._handle = new
        old.close()
        with self._lock:
            self._segments.append(Segment(base, path, 0))

    def read(self, offset: int, limit: int, max_records: int, max_bytes: int) -> list[Entry]:
        """Frames from ``offset`` up to ``limit`` (worker thread; see ``Journal.read``)."""
        with self._lock:
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

    def frees(self, offset: int) -> bool:
        """Whether acknowledging ``offset`` frees a whole segment."""
        return len(self._segments) > 1 and self._segments[1].base <= offset

    def free_before(self, offset: int) -> None:
        """Delete the segments that lie wholly before ``offset`` (worker thread)."""
        with self._lock:
            doomed = []
            while len(self._segments) > 1 and self._segments[1].base <= offset:
                doomed.append(self._segments.pop(0))
        for segment in doomed:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    def close(self) -> None:
        """Close the active segment."""
        self._handle.close()


# --- the directory (worker thread) -------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_meta(directory: Path, journal_id: str, acked: int) -> None:
    """Save the journal id and the acknowledged offset (write, fsync, rename, fsync)."""
    tmp = directory / (META + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump({"journal_id": journal_id, "acked": acked}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(directory / META)
    fsync_dir(directory)


def _read_meta(directory: Path) -> tuple[str, int] | None:
    path = directory / META
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


def recover(directory: Path) -> Recovered:
    """Open (or create) a journal directory: cut a torn tail, list the unacknowledged frames.

    Raises:
        JournalError: the directory cannot be created or read, or its state is inconsistent.
    """
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
            _logger.warning("journal %s: no %s; reading from its oldest segment", directory, META)
        write_meta(directory, journal_id, acked)
    else:
        journal_id, acked = meta
    segments: list[Segment] = []
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
        segments.append(Segment(base, path, scan.valid))
        ends.extend(scan.ends)
    if not segments:
        path = directory / f"{acked:020d}{_SUFFIX}"
        path.touch()
        fsync_dir(directory)
        segments.append(Segment(acked, path, 0))
    first = segments[0]
    if acked < first.base:
        acked = first.base
    tail = segments[-1]
    if acked > tail.base + tail.size:
        raise JournalError(str(directory), f"acknowledged offset {acked} is past the journal's end")
    return Recovered(journal_id, acked, segments, ends)
