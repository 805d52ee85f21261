"""Journal frames as contract events, and the socket source's positions.

A position is ``"<journal id>:<offset>"``, the offset just past the event's frame. A record
frame is parsed into a :class:`Found`; a rejection made at reception, a damaged frame or a line
that is not a record becomes an :class:`Unreadable` with a reason, counted in the stats.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Final

from ..journal import KIND_DAMAGED, KIND_RECORD, KIND_REJECTED, Entry, Journal
from ._contract import Event, Found, Unreadable
from ._socket_check import SocketStats
from ._socket_listener import RAW_KEEP_BYTES
from ._socket_record import PROTOCOL_VERSION, RecordError, parse_socket_record

# The socket source's own logger: these lines are the source's.
_logger = logging.getLogger("exporter.source._socket")

ORIGIN: Final = "socket"


def position(journal: Journal, offset: int) -> str:
    """The position that names ``offset`` in ``journal``."""
    return f"{journal.journal_id}:{offset}"


def offset_of(journal: Journal, position: str) -> int | None:
    """The offset a position names, or ``None`` if it is not a position of ``journal``."""
    ident, _, number = position.rpartition(":")
    if ident != journal.journal_id or not number.isdigit():
        return None
    return int(number)


class JournalEvents:
    """Turns journal frames into events (and checks a saved position) for one socket source.

    Args:
        journal_dir: named in the log lines.
        stats: where invalid lines are counted.
    """

    def __init__(self, journal_dir: Path, stats: SocketStats) -> None:
        self._journal_dir = journal_dir
        self._stats = stats
        self._warned_version = False

    def resume_offset(self, journal: Journal, resume: str) -> int | None:
        """The offset of a saved position, or ``None`` (logged) if reading must start over."""
        offset = offset_of(journal, resume)
        if offset is None:
            _logger.warning(
                "socket checkpoint %s is not of the journal in %s; reading it from its start",
                resume,
                self._journal_dir,
            )
            return None
        if offset < journal.acked or offset > journal.committed or not journal.is_boundary(offset):
            _logger.warning(
                "socket checkpoint offset %d is not a frame of the journal (%d to %d); "
                "reading from %d",
                offset,
                journal.acked,
                journal.committed,
                journal.acked,
            )
            return None
        return offset

    def event(self, journal: Journal, entry: Entry) -> Event:
        """The event one journal frame stands for."""
        where = position(journal, entry.end)
        if entry.kind == KIND_REJECTED:
            head, _, raw = entry.payload.partition(b"\n")
            try:
                info = json.loads(head)
                reason, detail = str(info["reason"]), str(info["detail"])
            except (ValueError, KeyError, TypeError):
                reason, detail = "unreadable", "a damaged rejection entry"
            self._stats.on_invalid(reason)
            return Unreadable(None, reason, detail, raw=raw, position=where)
        if entry.kind != KIND_RECORD:
            self._stats.on_invalid("unreadable")
            what = (
                "a journal frame changed on disk after it was committed (CRC mismatch)"
                if entry.kind == KIND_DAMAGED
                else f"a journal frame of unknown kind {entry.kind}"
            )
            return Unreadable(
                None,
                "unreadable",
                what,
                raw=entry.payload[:RAW_KEEP_BYTES],
                position=where,
            )
        try:
            trace, version = parse_socket_record(entry.payload)
        except RecordError as exc:
            self._stats.on_invalid(exc.reason)
            return Unreadable(
                exc.record_id,
                exc.reason,
                f"socket record: {exc.detail}",
                raw=entry.payload[:RAW_KEEP_BYTES],
                position=where,
            )
        if version is not None and version > PROTOCOL_VERSION and not self._warned_version:
            self._warned_version = True
            _logger.warning(
                "socket records of protocol version %d (this exporter knows up to %d): "
                "reading the fields it knows",
                version,
                PROTOCOL_VERSION,
            )
        return Found(trace, position=where, origin=ORIGIN)
