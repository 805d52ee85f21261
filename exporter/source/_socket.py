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

The parts: ``_socket_reception`` (the thread, the listener and the journal, what a received
line becomes), ``_socket_events`` (journal frames as events, positions) and ``_socket_check``
(the stats and ``check``); :class:`SocketSource` composes them into the source contract.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from ..journal import Journal, JournalOptions
from ._contract import CaughtUp, Event
from ._socket_check import SocketCheck, SocketStats, check_socket
from ._socket_events import ORIGIN, JournalEvents, offset_of, position
from ._socket_listener import ListenerOptions
from ._socket_reception import Reception

__all__ = ["SocketCheck", "SocketSource", "SocketStats"]


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

    name = ORIGIN

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
        self._reception = Reception(
            self.path,
            self.journal_dir,
            listener=listener or ListenerOptions(),
            journal=journal or JournalOptions(),
            stats=self.stats,
            threaded=reception_thread,
        )
        self._events = JournalEvents(self.journal_dir, self.stats)
        self._batch_records = batch_records
        self._started = asyncio.Lock()
        self._closed = False
        self._draining = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the journal, then listen. Idempotent; :meth:`read` calls it too.

        Raises:
            SocketPathError: the path cannot be listened on (SocketInUseError: it is served).
            JournalError: the journal directory cannot be opened.
        """
        async with self._started:
            if self._reception.journal is not None:
                return
            await self._reception.start()

    async def stop_listening(self) -> None:
        """Shutdown, first step: accept no more records and commit what was received; a
        following :meth:`read` then ends at its next :class:`CaughtUp`, so the worker ships
        what the journal holds and stops (what it cannot ship stays journaled)."""
        try:
            await self._reception.stop_listening()
        finally:
            self._draining.set()

    async def aclose(self) -> None:
        """Stop listening, commit what was received, close the journal."""
        self._closed = True
        await self._reception.aclose()

    @property
    def listening(self) -> bool:
        """Whether the listener is up (for /readyz)."""
        listener = self._reception.listener
        return listener is not None and listener.listening

    @property
    def journal(self) -> Journal:
        """The journal (after :meth:`start`): depth gauges, committed offset."""
        journal = self._reception.journal
        if journal is None:
            raise RuntimeError("SocketSource.start() was not called")
        return journal

    def stream_key(self) -> str:
        """One checkpoint stream per socket path."""
        return f"socket:{self.path}"

    # --- reading ---------------------------------------------------------------------------
    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Journal frames from ``resume`` on, as contract events (see the module docstring)."""
        await self.start()
        journal = self.journal
        offset = await self._resume_offset(journal, resume)
        while not self._closed:
            entries = await journal.read(offset, max_records=self._batch_records)
            if not entries:
                yield CaughtUp(position=position(journal, offset))
                if not follow or self._draining.is_set():
                    return
                await self._wait_beyond(journal, offset)
                continue
            for entry in entries:
                yield self._events.event(journal, entry)
                offset = entry.end

    async def _wait_beyond(self, journal: Journal, offset: int) -> None:
        """New committed frames, or the start of a shutdown (:meth:`stop_listening`)."""
        beyond = asyncio.ensure_future(self._reception.run(journal.wait_beyond(offset)))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({beyond, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (beyond, draining):
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter

    async def _resume_offset(self, journal: Journal, resume: str | None) -> int:
        if resume is None:
            return journal.acked
        offset = self._events.resume_offset(journal, resume)
        if offset is None:
            return journal.acked
        await self._reception.run(journal.trim(offset))
        return offset

    async def acknowledge(self, position: str) -> None:
        """Everything up to ``position`` was delivered (and its checkpoint saved): trim.

        Call it after the checkpoint save that recorded ``position``; a position of another
        journal is ignored.
        """
        offset = offset_of(self.journal, position)
        if offset is not None:
            await self._reception.run(self.journal.trim(offset))

    # --- check -----------------------------------------------------------------------------
    async def check(self) -> SocketCheck:
        """Whether the socket is up and when a record last arrived (for ``check``).

        Works without :meth:`start` (the ``check`` command, while the sidecar serves the
        socket): the latest arrival is then read from the journal directory.
        """
        return await check_socket(
            self.path,
            self.journal_dir,
            self.stats,
            listening=self.listening,
            journal=self._reception.journal,
        )
