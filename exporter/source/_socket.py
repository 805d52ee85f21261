"""The socket source: Letta pushes each provider trace; the exporter journals it, then reads it.

    Letta --(one JSON line per connection)--> SocketListener --append--> Journal (fsync in batches)
                                                                             |
                        worker <-- Found / Unreadable / CaughtUp -- SocketSource.read

Reception never waits on shipping: the listener only appends to the journal, and the reader
(:meth:`SocketSource.read`) is driven by the worker at its own pace. The listener and the journal
run on an event loop of their own, in a thread (``reception_thread``), so that converting and
encoding on the worker's loop never leaves a connection waiting to be accepted. A record counts
as received once the journal has fsynced it (group commit, a few milliseconds); what the worker
has delivered is acknowledged with :meth:`SocketSource.acknowledge`, which trims the journal.

**Positions** are ``"<journal id>:<offset>"``: the offset just past the event's journal frame.
``read(resume=...)`` continues there; a position from another journal (the journal directory was
replaced) or from before the journal's start reads from the journal's oldest frame, with a log
line, so a lost journal never makes the reader skip new records. Reading from a saved position
also acknowledges it, so a crash between the checkpoint save and :meth:`acknowledge` frees the
space at the next start.

**Full journal**: when the collector is away long enough for the journal to reach its
``max_bytes``, new records are *refused*: not written, counted in ``refused`` and reported by a
log line at most every 10 s with the count. Letta's sender does not retry a record that reached
the socket, so a refused record is gone from this path; the API poll (reconciliation), when one is
configured, still finds the traces the API can return. Nothing is dropped without a count.

Bad input becomes an :class:`Unreadable` event in journal order: a line that is not JSON or has a
field of the wrong type (``invalid``), a line over the size cap (``too_large``), or a connection
that went quiet mid-line (``timeout``), with the first 64 KiB of the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from ..journal import (
    KIND_DAMAGED,
    KIND_RECORD,
    KIND_REJECTED,
    Entry,
    Journal,
    JournalFullError,
    JournalOptions,
)
from ._contract import CaughtUp, Event, Found, Unreadable
from ._socket_listener import RAW_KEEP_BYTES, ListenerOptions, SocketListener
from ._socket_record import PROTOCOL_VERSION, RecordError, parse_socket_record

__all__ = ["SocketCheck", "SocketSource", "SocketStats"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

_NAME: Final = "socket"
_REPORT_INTERVAL: Final = 10.0
#: Appends queued and not yet fsynced past this pause the connections that add more.
_MAX_PENDING_BYTES: Final = 64 << 20


@dataclass(slots=True)
class SocketStats:
    """What the socket source counts (subclass it, or read it, to feed Prometheus).

    Attributes:
        received: records (lines) journaled.
        received_bytes: their bytes.
        invalid: lines that could not be read, by reason (counted when read back).
        refused: records refused because the journal was full.
        refused_bytes: their bytes.
        last_received: wall-clock time (epoch seconds) of the latest line, or ``None``.
    """

    received: int = 0
    received_bytes: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    refused_bytes: int = 0
    last_received: float | None = None

    def on_received(self, size: int) -> None:
        """A line was appended to the journal."""
        self.received += 1
        self.received_bytes += size
        self.last_received = time.time()

    def on_refused(self, size: int) -> None:
        """A line was refused: the journal is full."""
        self.refused += 1
        self.refused_bytes += size
        self.last_received = time.time()

    def on_invalid(self, reason: str) -> None:
        """A journaled line turned out not to be a record."""
        self.invalid[reason] = self.invalid.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class SocketCheck:
    """What ``check`` reports about the listener.

    Attributes:
        path: the socket path.
        listening: this process serves it.
        is_socket: the path exists and is a socket.
        connectable: a connection to it was accepted.
        last_received: when the latest record arrived (``None``: none since start).
        received: records received since start.
        journal_depth: records journaled and not yet acknowledged.
    """

    path: str
    listening: bool
    is_socket: bool
    connectable: bool
    last_received: datetime | None
    received: int
    journal_depth: int

    def describe(self) -> str:
        """One line for ``check``."""
        if not self.connectable:
            state = "not accepting connections" if self.is_socket else "no socket there"
            return f"socket {self.path}: {state}"
        if self.last_received is None:
            seen = "no record yet (is Letta's socket backend on and pointed here?)"
        else:
            seen = f"latest record at {self.last_received.isoformat()}"
        depth = f"; {self.journal_depth} records journaled" if self.listening else ""
        return f"socket {self.path}: accepting connections; {seen}{depth}"


class SocketSource:
    """Receives Letta's pushed provider traces on a Unix socket (see the module docstring).

    Args:
        path: the socket path (created, mode ``listener.mode``).
        journal_dir: where the journal lives (on a disk that survives a restart).
        listener: socket mode, size cap and connection timeout.
        journal: journal size limit and commit policy.
        stats: the counters to update (a subclass can forward to Prometheus).
        batch_records: journal frames read per batch.
        reception_thread: run the listener and the journal on an event loop of their own in a
            thread, so the work done with the events (converting, encoding) never keeps a
            sender waiting for its connection to be accepted: Letta's sender connects with a
            timeout, which makes a full listen backlog an immediate failure and a lost record.
            The stats are then updated from that thread.
    """

    name = _NAME

    def __init__(
        self,
        path: Path | str,
        journal_dir: Path | str,
        *,
        listener: ListenerOptions | None = None,
        journal: JournalOptions | None = None,
        stats: SocketStats | None = None,
        batch_records: int = 64,
        reception_thread: bool = True,
    ) -> None:
        self.path = Path(path)
        self.journal_dir = Path(journal_dir)
        self.stats = stats if stats is not None else SocketStats()
        self._listener_options = listener or ListenerOptions()
        self._journal_options = journal or JournalOptions()
        self._batch_records = batch_records
        self._threaded = reception_thread
        self._rx_loop: asyncio.AbstractEventLoop | None = None
        self._rx_thread: threading.Thread | None = None
        self._journal: Journal | None = None
        self._listener: SocketListener | None = None
        self._started = asyncio.Lock()
        self._closed = False
        self._draining = asyncio.Event()
        self._warned_version = False
        self._refused_since_report = 0
        self._refusal = ""
        self._last_report = 0.0

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the journal, then listen. Idempotent; :meth:`read` calls it too.

        Raises:
            SocketPathError: the path cannot be listened on (SocketInUseError: it is served).
            JournalError: the journal directory cannot be opened.
        """
        async with self._started:
            if self._journal is not None:
                return
            if self._threaded:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="socket-reception", daemon=True
                )
                thread.start()
                self._rx_loop, self._rx_thread = loop, thread
            try:
                await self._on_reception(self._start_reception())
            except BaseException:
                await self._stop_thread()
                raise

    async def _start_reception(self) -> None:
        journal = await Journal.open(self.journal_dir, self._journal_options)
        listener = SocketListener(
            self.path,
            on_line=self._on_line,
            on_reject=self._on_reject,
            options=self._listener_options,
        )
        self._journal = journal
        try:
            await listener.start()
        except BaseException:
            self._journal = None
            await journal.aclose()
            raise
        self._listener = listener

    async def _on_reception(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` where the listener and the journal live (their own thread, if any)."""
        if self._rx_loop is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._rx_loop))

    async def stop_listening(self) -> None:
        """Shutdown, first step: accept no more records and commit what was received; a
        following :meth:`read` then ends at its next :class:`CaughtUp`, so the worker ships
        what the journal holds and stops (what it cannot ship stays journaled)."""
        try:
            if self._journal is not None:
                await self._on_reception(self._stop_listener())
        finally:
            self._draining.set()

    async def _stop_listener(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        journal = self.journal
        await journal.wait_committed(journal.end)

    async def aclose(self) -> None:
        """Stop listening, commit what was received, close the journal."""
        self._closed = True
        if self._journal is not None or self._listener is not None:
            await self._on_reception(self._stop_reception())
        await self._stop_thread()
        self._report_refused(force=True)

    async def _stop_reception(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        if self._journal is not None:
            await self._journal.aclose()

    async def _stop_thread(self) -> None:
        loop, thread = self._rx_loop, self._rx_thread
        if loop is None or thread is None:
            return
        self._rx_loop = self._rx_thread = None
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop)
        )
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    @property
    def listening(self) -> bool:
        """Whether the listener is up (for /readyz)."""
        return self._listener is not None and self._listener.listening

    @property
    def journal(self) -> Journal:
        """The journal (after :meth:`start`): depth gauges, committed offset."""
        if self._journal is None:
            raise RuntimeError("SocketSource.start() was not called")
        return self._journal

    def stream_key(self) -> str:
        """One checkpoint stream per socket path."""
        return f"socket:{self.path}"

    # --- reception -------------------------------------------------------------------------
    def _on_line(self, line: bytes) -> Awaitable[None] | None:
        journal = self.journal
        try:
            end = journal.append(KIND_RECORD, line)
        except JournalFullError as exc:
            self.stats.on_refused(len(line))
            self._refused_since_report += 1
            self._refusal = str(exc)
            self._report_refused()
            return None
        self.stats.on_received(len(line))
        if journal.pending_bytes > _MAX_PENDING_BYTES:
            return journal.wait_committed(end)
        return None

    def _on_reject(self, reason: str, detail: str, raw: bytes) -> None:
        head = json.dumps({"reason": reason, "detail": detail}).encode()
        try:
            self.journal.append(KIND_REJECTED, head + b"\n" + raw)
        except JournalFullError as exc:
            self.stats.on_refused(len(raw))
            self._refused_since_report += 1
            self._refusal = str(exc)
            self._report_refused()
            _logger.error(
                "socket %s: %s (%s); not journaled: the journal is full", self.path, reason, detail
            )

    def _report_refused(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._refused_since_report or (
            not force and now - self._last_report < _REPORT_INTERVAL
        ):
            return
        self._last_report = now
        _logger.error(
            "journal %s: %s; refused %d records since the last report; Letta does not resend "
            "them (the API poll still finds what the API keeps)",
            self.journal_dir,
            self._refusal,
            self._refused_since_report,
        )
        self._refused_since_report = 0

    # --- reading ---------------------------------------------------------------------------
    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Journal frames from ``resume`` on, as contract events (see the module docstring)."""
        await self.start()
        journal = self.journal
        offset = await self._resume_offset(journal, resume)
        while not self._closed:
            entries = await journal.read(offset, max_records=self._batch_records)
            if not entries:
                yield CaughtUp(position=self._position(offset))
                if not follow or self._draining.is_set():
                    return
                await self._wait_beyond(journal, offset)
                continue
            for entry in entries:
                yield self._event(entry)
                offset = entry.end

    async def _wait_beyond(self, journal: Journal, offset: int) -> None:
        """New committed frames, or the start of a shutdown (:meth:`stop_listening`)."""
        beyond = asyncio.ensure_future(self._on_reception(journal.wait_beyond(offset)))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({beyond, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (beyond, draining):
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter

    async def acknowledge(self, position: str) -> None:
        """Everything up to ``position`` was delivered (and its checkpoint saved): trim.

        Call it after the checkpoint save that recorded ``position``; a position of another
        journal is ignored.
        """
        offset = self._offset_of(self.journal, position)
        if offset is not None:
            await self._on_reception(self.journal.trim(offset))

    def _position(self, offset: int) -> str:
        return f"{self.journal.journal_id}:{offset}"

    @staticmethod
    def _offset_of(journal: Journal, position: str) -> int | None:
        ident, _, number = position.rpartition(":")
        if ident != journal.journal_id or not number.isdigit():
            return None
        return int(number)

    async def _resume_offset(self, journal: Journal, resume: str | None) -> int:
        if resume is None:
            return journal.acked
        offset = self._offset_of(journal, resume)
        if offset is None:
            _logger.warning(
                "socket checkpoint %s is not of the journal in %s; reading it from its start",
                resume,
                self.journal_dir,
            )
            return journal.acked
        if offset < journal.acked or offset > journal.committed or not journal.is_boundary(offset):
            _logger.warning(
                "socket checkpoint offset %d is not a frame of the journal (%d to %d); "
                "reading from %d",
                offset,
                journal.acked,
                journal.committed,
                journal.acked,
            )
            return journal.acked
        await self._on_reception(journal.trim(offset))
        return offset

    def _event(self, entry: Entry) -> Event:
        position = self._position(entry.end)
        if entry.kind == KIND_REJECTED:
            head, _, raw = entry.payload.partition(b"\n")
            try:
                info = json.loads(head)
                reason, detail = str(info["reason"]), str(info["detail"])
            except (ValueError, KeyError, TypeError):
                reason, detail = "unreadable", "a damaged rejection entry"
            self.stats.on_invalid(reason)
            return Unreadable(None, reason, detail, raw=raw, position=position)
        if entry.kind != KIND_RECORD:
            self.stats.on_invalid("unreadable")
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
                position=position,
            )
        try:
            trace, version = parse_socket_record(entry.payload)
        except RecordError as exc:
            self.stats.on_invalid(exc.reason)
            return Unreadable(
                exc.record_id,
                exc.reason,
                f"socket record: {exc.detail}",
                raw=entry.payload[:RAW_KEEP_BYTES],
                position=position,
            )
        if version is not None and version > PROTOCOL_VERSION and not self._warned_version:
            self._warned_version = True
            _logger.warning(
                "socket records of protocol version %d (this exporter knows up to %d): "
                "reading the fields it knows",
                version,
                PROTOCOL_VERSION,
            )
        return Found(trace, position=position, origin=_NAME)

    # --- check -----------------------------------------------------------------------------
    async def check(self) -> SocketCheck:
        """Whether the socket is up and when a record last arrived (for ``check``).

        Works without :meth:`start` (the ``check`` command, while the sidecar serves the
        socket): the latest arrival is then read from the journal directory.
        """
        path = str(self.path)
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            is_socket = False
        connectable = is_socket and await asyncio.to_thread(_can_connect, path)
        last = self.stats.last_received
        if last is None and self._journal is None:
            # Another process (the running sidecar) serves the socket: its journal's newest
            # segment was last written when its latest record was committed.
            last = await asyncio.to_thread(_journal_written_at, self.journal_dir)
        return SocketCheck(
            path=path,
            listening=self.listening,
            is_socket=is_socket,
            connectable=connectable,
            last_received=datetime.fromtimestamp(last, UTC) if last is not None else None,
            received=self.stats.received,
            journal_depth=self._journal.depth_records if self._journal else 0,
        )


def _journal_written_at(directory: Path) -> float | None:
    try:
        times = [p.stat().st_mtime for p in directory.glob("*.seg") if p.stat().st_size]
    except OSError:
        return None
    return max(times) if times else None


def _can_connect(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
