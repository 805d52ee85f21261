"""The socket source's reception: the listener and the journal, on an event loop of their own in
a thread (or on the caller's loop), and what happens to each received line.

Reception never waits on shipping: a line is appended to the journal and counted; a full
journal refuses it, counted too and reported by a log line at most every 10 s. Only when the
disk falls behind (too many bytes queued and not yet fsynced) does the connection that adds more
pause until its line is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar

from ..journal import KIND_RECORD, KIND_REJECTED, Journal, JournalFullError, JournalOptions
from ._socket_check import SocketStats
from ._socket_listener import ListenerOptions, SocketListener

__all__ = ["Reception"]

# The socket source's own logger: these lines are the source's.
_logger = logging.getLogger("exporter.source._socket")

T = TypeVar("T")

_REPORT_INTERVAL: Final = 10.0
#: Appends queued and not yet fsynced past this pause the connections that add more.
_MAX_PENDING_BYTES: Final = 64 << 20


class Reception:
    """The listener, the journal and the thread they run in (see the module docstring).

    Args:
        path: the socket path.
        journal_dir: the journal directory.
        listener: socket mode, size cap and connection timeout.
        journal: journal size limit and commit policy.
        stats: the counters to update (from the reception thread, if there is one).
        threaded: run on an event loop of their own, in a thread.
    """

    def __init__(
        self,
        path: Path,
        journal_dir: Path,
        *,
        listener: ListenerOptions,
        journal: JournalOptions,
        stats: SocketStats,
        threaded: bool,
    ) -> None:
        self.path = path
        self.journal_dir = journal_dir
        self.stats = stats
        self._listener_options = listener
        self._journal_options = journal
        self._threaded = threaded
        self._rx_loop: asyncio.AbstractEventLoop | None = None
        self._rx_thread: threading.Thread | None = None
        self.journal: Journal | None = None
        self.listener: SocketListener | None = None
        self._refused_since_report = 0
        self._refusal = ""
        self._last_report = 0.0

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the thread (if any), open the journal, then listen."""
        if self._threaded:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="socket-reception", daemon=True)
            thread.start()
            self._rx_loop, self._rx_thread = loop, thread
        try:
            await self.run(self._start())
        except BaseException:
            await self._stop_thread()
            raise

    async def _start(self) -> None:
        journal = await Journal.open(self.journal_dir, self._journal_options)
        listener = SocketListener(
            self.path,
            on_line=self._on_line,
            on_reject=self._on_reject,
            options=self._listener_options,
        )
        self.journal = journal
        try:
            await listener.start()
        except BaseException:
            self.journal = None
            await journal.aclose()
            raise
        self.listener = listener

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` where the listener and the journal live (their own thread, if any)."""
        if self._rx_loop is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._rx_loop))

    async def stop_listening(self) -> None:
        """Accept no more records and wait until what was received is committed."""
        if self.journal is not None:
            await self.run(self._stop_listener())

    async def _stop_listener(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        journal = self._journal()
        await journal.wait_committed(journal.end)

    async def aclose(self) -> None:
        """Stop listening, commit what was received, close the journal and the thread."""
        if self.journal is not None or self.listener is not None:
            await self.run(self._stop())
        await self._stop_thread()
        self._report_refused(force=True)

    async def _stop(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        if self.journal is not None:
            await self.journal.aclose()

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

    def _journal(self) -> Journal:
        if self.journal is None:
            raise RuntimeError("SocketSource.start() was not called")
        return self.journal

    # --- reception -------------------------------------------------------------------------
    def _on_line(self, line: bytes) -> Awaitable[None] | None:
        journal = self._journal()
        try:
            end = journal.append(KIND_RECORD, line)
        except JournalFullError as exc:
            self._refused(len(line), exc)
            return None
        self.stats.on_received(len(line))
        if journal.pending_bytes > _MAX_PENDING_BYTES:
            return journal.wait_committed(end)
        return None

    def _on_reject(self, reason: str, detail: str, raw: bytes) -> None:
        head = json.dumps({"reason": reason, "detail": detail}).encode()
        try:
            self._journal().append(KIND_REJECTED, head + b"\n" + raw)
        except JournalFullError as exc:
            self._refused(len(raw), exc)
            _logger.error(
                "socket %s: %s (%s); not journaled: the journal is full", self.path, reason, detail
            )

    def _refused(self, size: int, exc: JournalFullError) -> None:
        self.stats.on_refused(size)
        self._refused_since_report += 1
        self._refusal = str(exc)
        self._report_refused()

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
