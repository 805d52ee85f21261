"""The PostgreSQL source's paged read: key pages, row batches, their runs and agents, as events.

Rows are read in keyset order of ``(created_at, id)``: a key page names the next keys (see
:mod:`._pg_schema`), then each batch of them is fetched with its steps and metrics, the runs and
agents those rows name are looked up, and the rows become events. The position moves with each
event, and an overlap window behind the database's clock is read again for rows committed late
(:mod:`._pg_position`). Following, the read starts over every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import psycopg

from .._retry import wait_or_stop
from ..errors import DatabaseConfigError
from ..models import Agent, ProviderTrace, Run, Step, StepMetrics
from ._contract import CaughtUp, Event, Found, Unreadable
from ._pg_connection import Conn, PgConnection
from ._pg_options import PostgresOptions, query_filters, query_params
from ._pg_position import Cursor
from ._pg_rows import UnreadableRow, agent_from_row, row_ids, run_from_row
from ._pg_schema import Queries

__all__ = ["ParseRow", "PgReader"]

_logger = logging.getLogger(__name__)

_AGENT_CACHE_MAX: Final = 10_000
#: Events taken between two event-loop turns while the next batch is being read.
_TURN_EVERY: Final = 32


class ParseRow(Protocol):
    """How one row becomes its records (:func:`._pg_rows.trace_from_row`'s shape)."""

    def __call__(
        self, row: tuple[Any, ...], *, bodies: bool = ...
    ) -> tuple[ProviderTrace, Step | None, StepMetrics | None]: ...


_Key = tuple[datetime, str, bool]  # created_at, id, metadata-only


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batch's rows by id (with whether they carry bodies), its runs and its agents."""

    rows: dict[str, tuple[tuple[Any, ...], bool]]
    runs: dict[str, Run]
    agents: dict[str, Agent]


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Marks a read-ahead's failure as seen: when nobody awaits it any more (the read was
    stopped, the session closed), the error is the stop's consequence, not news."""
    if not task.cancelled():
        task.exception()


def _chunks(keys: list[_Key], size: int, limit: int | None) -> list[Sequence[_Key]]:
    """A key page in batches of ``size``, as many as a ``limit`` needs (the last one whole:
    the limit stops inside it, at an event)."""
    chunks: list[Sequence[_Key]] = []
    for start in range(0, len(keys), size):
        if limit is not None and start >= limit:
            break
        chunks.append(keys[start : start + size])
    return chunks


class PgReader:
    """Events oldest first from one :class:`PgConnection`, with the agents it has seen cached.

    Args:
        options: what to read.
        connection: the session to read through (its errors are translated there).
        origin: the source's name, carried by every ``Found``.
        parse: one row to its trace, step and metrics; the source passes the row reader it
            names, so what it reads rows with is decided in one place.
        stop: ends a following read's wait for new rows when set (shutdown).
    """

    def __init__(
        self,
        options: PostgresOptions,
        connection: PgConnection,
        *,
        origin: str,
        parse: ParseRow,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._stop = stop if stop is not None else asyncio.Event()  # never set: poll on
        self._options = options
        self._connection = connection
        self._origin = origin
        self._parse = parse
        self._agents: dict[str, Agent] = {}
        self._said_metadata = False

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Events oldest first, right after ``resume``.

        Raises:
            DatabaseConfigError: the database cannot be used as configured (exit 2).
            DatabaseError: a failure at run time (connection lost, a query timed out).
        """
        connection = self._connection
        try:
            cursor = Cursor.decode(resume)
        except ValueError as exc:
            raise DatabaseConfigError(
                connection.target, f"the saved position is not one of this source: {exc}"
            ) from None
        remaining = self._options.limit
        overlap = timedelta(seconds=self._options.overlap)
        while True:
            try:
                conn, queries = await connection.open()
                async with contextlib.aclosing(
                    self._read_keys(conn, queries, cursor, overlap, remaining)
                ) as events:
                    async for event in events:
                        if isinstance(event, Found) and remaining is not None:
                            remaining -= 1
                        yield event
                        if remaining is not None and remaining <= 0:
                            # The cursor has moved past the whole batch; the limit stopped
                            # inside it.
                            yield CaughtUp(event.position)
                            return
            except psycopg.Error as exc:
                raise await connection.read_error(exc) from None
            yield CaughtUp(cursor.encode())
            if not follow or await wait_or_stop(self._stop, self._options.poll_interval):
                return

    async def _read_keys(
        self, conn: Conn, queries: Queries, cursor: Cursor, overlap: timedelta, limit: int | None
    ) -> AsyncGenerator[Event, None]:
        """Key pages until one comes back short: everything committed so far, once.

        The batches of a page are read one ahead: while one batch's rows become events, the
        next batch's queries are in flight, so the database works on them (in its own process)
        while this one converts, instead of each waiting for the other.
        """
        options = self._options
        page = options.key_page
        while True:
            # The horizon comes from the database's clock, the one that set created_at.
            now = await (await conn.execute("SELECT statement_timestamp()")).fetchone()
            assert now is not None
            horizon: datetime = now[0] - overlap
            cursor.prune(horizon)
            want = page if limit is None else min(page, limit)
            cur = await conn.execute(
                queries.keys(query_filters(options, cursor)),
                query_params(options, cursor, horizon, want),
            )
            keys: list[_Key] = await cur.fetchall()
            chunks = _chunks(keys, options.batch, limit)
            if limit is not None:
                limit -= sum(map(len, chunks))
            async with contextlib.aclosing(
                self._read_chunks(conn, queries, chunks, cursor, horizon)
            ) as events:
                async for event in events:
                    yield event
            if (limit is not None and limit <= 0) or len(keys) < want:
                return

    async def _read_chunks(
        self,
        conn: Conn,
        queries: Queries,
        chunks: list[Sequence[_Key]],
        cursor: Cursor,
        horizon: datetime,
    ) -> AsyncGenerator[Event, None]:
        """The events of ``chunks`` in order, the next chunk read while this one is taken."""
        if not chunks:
            return
        ahead: asyncio.Task[_Batch] | None = None
        try:
            batch = await self._read_rows(conn, queries, chunks[0])
            for index, chunk in enumerate(chunks):
                if index + 1 < len(chunks):
                    ahead = asyncio.ensure_future(self._read_rows(conn, queries, chunks[index + 1]))
                for taken, event in enumerate(self._events(chunk, batch, cursor, horizon), 1):
                    yield event
                    if ahead is not None and taken % _TURN_EVERY == 0:
                        # An event-loop turn: the driver reads what the server has sent of the
                        # next batch, so the server is never left waiting on a full socket.
                        await asyncio.sleep(0)
                if ahead is not None:
                    batch, ahead = await ahead, None
        finally:
            if ahead is not None:
                # Stopped (a limit, shutdown, an error downstream) with a read in flight: end
                # it before the session is used again or closed.
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await ahead

    async def _read_rows(self, conn: Conn, queries: Queries, keys: Sequence[_Key]) -> _Batch:
        """One batch of keys: its rows (with steps and metrics), their runs and agents.

        The rows become records only as the caller takes each event (:meth:`_events`), so
        one trace's parsed bodies are alive at a time, not a whole batch's: the garbage
        collector then never walks hundreds of 20 KB bodies (it cost a third of the source's
        CPU).
        """
        full = [k[1] for k in keys if not k[2]]
        meta = [k[1] for k in keys if k[2]]
        rows: dict[str, tuple[tuple[Any, ...], bool]] = {}
        if full:
            cur = await conn.execute(queries.rows, {"ids": full})
            for row in await cur.fetchall():
                rows[row[0]] = (row, True)
        if meta:
            if not self._said_metadata:
                self._said_metadata = True
                _logger.warning(
                    "database %s: provider traces stored as metadata only"
                    " (provider_trace_metadata, no request/response bodies): their spans carry"
                    " no bodies",
                    self._connection.target,
                )
            cur = await conn.execute(queries.metadata_rows, {"ids": meta})
            for row in await cur.fetchall():
                rows[row[0]] = (row, False)

        run_ids: set[str] = set()
        agent_ids: set[str] = set()
        for row, _bodies in rows.values():
            run_id, agent_id = row_ids(row)
            if run_id:
                run_ids.add(run_id)
            if agent_id:
                agent_ids.add(agent_id)
        runs = await self._runs(conn, queries, run_ids)
        known = self._agents
        missing = agent_ids - known.keys()
        if missing and len(known) + len(missing) > _AGENT_CACHE_MAX:
            known.clear()  # bounded; this batch's agents are all read again below
            missing = agent_ids
        await self._load_agents(conn, queries, missing)
        # The batch's own agents: the next batch's read may empty the cache meanwhile.
        agents = {a: known[a] for a in agent_ids if a in known}
        return _Batch(rows, runs, agents)

    def _events(
        self,
        keys: Sequence[_Key],
        batch: _Batch,
        cursor: Cursor,
        horizon: datetime,
    ) -> Iterator[Event]:
        """A plain generator, not an async one: one coroutine frame fewer to resume per
        event (rows deleted between the key page and the read are passed over)."""
        rows, runs, agents = batch.rows, batch.runs, batch.agents
        origin = self._origin
        parse = self._parse
        for created_at, record_id, _meta in keys:
            found = rows.pop(record_id, None)
            if found is None:
                continue  # deleted (or soft-deleted) between the key page and this read
            row, bodies = found
            try:
                trace, step, metrics = parse(row, bodies=bodies)
            except UnreadableRow as exc:
                cursor.advance(created_at, record_id, horizon)
                yield Unreadable(
                    record_id=record_id,
                    reason="invalid",
                    detail=f"provider trace {record_id}: {exc.detail}",
                    raw=exc.raw,
                    position=cursor.encode(),
                )
                continue
            cursor.advance(created_at, record_id, horizon)
            run_id = trace.run_id or (step.run_id if step else None)
            agent_id = trace.agent_id or (step.agent_id if step else None)
            yield Found(
                trace=trace,
                step=step,
                metrics=metrics,
                run=runs.get(run_id) if run_id else None,
                agent=agents.get(agent_id) if agent_id else None,
                position=cursor.encode(),
                origin=origin,
            )

    async def _runs(self, conn: Conn, queries: Queries, ids: set[str]) -> dict[str, Run]:
        if not ids:
            return {}
        cur = await conn.execute(queries.runs, {"ids": list(ids)})
        runs: dict[str, Run] = {}
        for row in await cur.fetchall():
            try:
                runs[row[0]] = run_from_row(row)
            except (UnreadableRow, ValueError) as exc:
                _logger.warning("run %s: unreadable row, its traces go without it: %s", row[0], exc)
        return runs

    async def _load_agents(self, conn: Conn, queries: Queries, ids: set[str]) -> None:
        if not ids:
            return
        cur = await conn.execute(queries.agents, {"ids": list(ids)})
        for row in await cur.fetchall():
            try:
                self._agents[row[0]] = agent_from_row(row)
            except ValueError as exc:
                _logger.warning(
                    "agent %s: unreadable row, its traces go without it: %s", row[0], exc
                )
