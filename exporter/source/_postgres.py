"""The PostgreSQL source: every provider trace a self-hosted Letta server stored, in bulk.

Reading Letta's database gives what the API cannot: every row (including the traces of
compacted steps and the null-step summarizations the API never returns), the step times the API
hides, and no request per trace. It is read-only by construction: the session is opened with
``default_transaction_read_only=on`` and a ``statement_timeout``, it sends only plain
``SELECT``\\s (no ``FOR UPDATE``/``FOR SHARE``: no row locks), and it never writes.

Order and resume: rows are read in keyset order of ``(created_at, id)`` (see
:mod:`._pg_schema` for the queries and :mod:`._pg_position` for the overlap window that catches
rows committed late). ``shard=(i, n)`` keeps the rows whose run id (the trace id when the row
has no run) hashes to ``i`` modulo ``n``, so ``n`` processes can split one export between them
and every run's traces, and so its parent span, stay in one of them.

Driver: psycopg 3. It is typed (mypy strict without stubs), uses libpq (so ``sslmode``,
``.pgpass``, service files and the ``PG*`` variables work as for ``psql``), and with its C
extension reads rows fast enough that the exporter's own per-trace work stays the bottleneck
(``bench/postgres.py``). asyncpg reads faster still but is untyped and speaks its own protocol
implementation, with fewer of libpq's connection options.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..errors import DatabaseConfigError, DatabaseError
from ..models import Agent, Run
from ._contract import CaughtUp, Event, Found, Unreadable
from ._pg_dsn import driver_dsn, mask_dsn
from ._pg_position import Cursor
from ._pg_rows import UnreadableRow, agent_from_row, row_ids, run_from_row, trace_from_row
from ._pg_schema import Filters, Queries, load_schema

__all__ = ["RECOMMENDED_INDEX", "PostgresCheck", "PostgresOptions", "PostgresSource"]

_logger = logging.getLogger(__name__)

#: The index that turns each key page from a sequential scan into an index range scan.
RECOMMENDED_INDEX: Final = (
    "CREATE INDEX CONCURRENTLY ix_provider_traces_created_at_id ON provider_traces (created_at, id)"
)
_AGENT_CACHE_MAX: Final = 10_000
_Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """What to read and how.

    Args:
        dsn: the database URL (``postgresql://user:password@host:5432/letta``; a SQLAlchemy
            ``postgresql+asyncpg://`` form is accepted). Its password is never logged.
        since, until: the ``created_at`` window (``since`` included, ``until`` excluded).
        agent_ids: only these agents' traces (empty: all).
        limit: stop after this many traces (``None``: no limit).
        shard: ``(index, count)``: only the rows whose run id (else id) hashes to ``index``
            modulo ``count``.
        key_page: keys per key query (each is one scan of the table when it has no index on
            ``created_at``: large pages keep scans few).
        batch: rows fetched with their steps, metrics, runs and agents per round trip.
        statement_timeout: seconds any one query may run.
        connect_timeout: seconds to wait for the connection.
        poll_interval: seconds between reads when following (the sidecar).
        overlap: seconds behind the database's clock re-read for rows committed late.
        stream: the checkpoint stream's key, when the caller keys it (the sidecar's ignores
            ``since``, a one-shot job keys on its window as written, ``since=30d``); default:
            one from the target and the filters above.
    """

    dsn: str = field(repr=False)  # holds the password: never in a repr or a log line
    since: datetime | None = None
    until: datetime | None = None
    agent_ids: tuple[str, ...] = ()
    limit: int | None = None
    shard: tuple[int, int] | None = None
    key_page: int = 20_000
    batch: int = 500
    statement_timeout: float = 60.0
    connect_timeout: float = 10.0
    poll_interval: float = 5.0
    overlap: float = 30.0
    stream: str | None = None


@dataclass(frozen=True, slots=True)
class PostgresCheck:
    """What ``check`` found (every line safe to print: no password)."""

    target: str
    server_version: str
    traces: int
    metadata_rows: int
    null_created_at: int
    index: str | None
    advice: str | None
    key_page_ms: float | None
    plan: str

    def lines(self) -> list[str]:
        out = [
            f"database {self.target}: PostgreSQL {self.server_version}, Letta schema readable",
            f"provider traces in the window: {self.traces}"
            + (f" (+{self.metadata_rows} metadata-only rows)" if self.metadata_rows else ""),
        ]
        if self.null_created_at:
            out.append(f"rows without created_at (not exported): {self.null_created_at}")
        if self.index:
            out.append(f"index on created_at: {self.index}")
        if self.advice:
            out.append(self.advice)
        return out


class PostgresSource:
    """Provider traces from Letta's PostgreSQL, with their steps, metrics, runs and agents."""

    name = "postgres"

    def __init__(self, options: PostgresOptions) -> None:
        if options.shard is not None:
            index, count = options.shard
            if not 0 <= index < count:
                raise ValueError(f"shard {index}/{count}: index must be in 0..{count - 1}")
        self._options = options
        self._target = mask_dsn(options.dsn)
        self._conn: _Conn | None = None
        self._queries: Queries | None = None
        self._agents: dict[str, Agent] = {}
        self._said_metadata = False

    @property
    def target(self) -> str:
        """The database as it may be printed (password masked)."""
        return self._target

    def stream_key(self) -> str:
        o = self._options
        if o.stream is not None:
            return o.stream
        parts = [
            self._target,
            o.since.isoformat() if o.since else "",
            o.until.isoformat() if o.until else "",
            ",".join(sorted(o.agent_ids)),
            f"{o.shard[0]}/{o.shard[1]}" if o.shard else "",
        ]
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
        return f"postgres:{digest}"

    # --- connection ---------------------------------------------------------------------------
    async def _connect(self) -> tuple[_Conn, Queries]:
        if self._conn is not None and not self._conn.closed and self._queries is not None:
            return self._conn, self._queries
        o = self._options
        settings = (
            "-c default_transaction_read_only=on"
            f" -c statement_timeout={int(o.statement_timeout * 1000)}"
            " -c lock_timeout=5000"
            f" -c idle_in_transaction_session_timeout={int(max(o.statement_timeout, 60) * 1000)}"
        )
        try:
            conn = await psycopg.AsyncConnection.connect(
                driver_dsn(o.dsn),
                autocommit=True,
                connect_timeout=max(1, round(o.connect_timeout)),
                application_name="letta-otel-exporter",
                options=settings,
            )
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except psycopg.ProgrammingError as exc:  # an invalid connection string
            raise DatabaseConfigError(
                self._target, f"invalid connection string: {_first_line(exc)}"
            ) from None
        try:
            queries = Queries(await load_schema(conn, self._target))
        except psycopg.Error as exc:
            await conn.close()
            raise self._query_error(exc) from None
        except BaseException:
            await conn.close()
            raise
        self._conn, self._queries = conn, queries
        return conn, queries

    def _connect_error(self, exc: psycopg.OperationalError) -> DatabaseError:
        text = _first_line(exc)
        # libpq reports these as text only (no SQLSTATE before the session exists).
        lowered = text.lower()
        if "password authentication failed" in lowered or "authentication failed" in lowered:
            return DatabaseConfigError(
                self._target, "authentication refused (check the user and password)"
            )
        if "no password supplied" in lowered:
            return DatabaseConfigError(
                self._target, "the server asks for a password and the URL has none"
            )
        if "does not exist" in lowered:
            return DatabaseConfigError(self._target, text.removeprefix("FATAL:  ").strip())
        return DatabaseError(
            self._target, f"cannot connect: {_without_secret(text, self._options.dsn)}"
        )

    def _query_error(self, exc: psycopg.Error) -> DatabaseError:
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
            return DatabaseConfigError(self._target, f"schema mismatch: {_first_line(exc)}")
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return DatabaseConfigError(self._target, f"permission denied: {_first_line(exc)}")
        if isinstance(exc, pg_errors.QueryCanceled):
            return DatabaseError(
                self._target,
                f"a query ran past statement_timeout ({self._options.statement_timeout:g} s);"
                f" a smaller key page or an index would help: {RECOMMENDED_INDEX}",
            )
        return DatabaseError(self._target, f"query failed: {_first_line(exc)}")

    async def aclose(self) -> None:
        conn, self._conn, self._queries = self._conn, None, None
        if conn is not None and not conn.closed:
            await conn.close()

    # --- reading ------------------------------------------------------------------------------
    def _filters(self, cursor: Cursor) -> Filters:
        o = self._options
        return Filters(
            since=o.since is not None,
            until=o.until is not None,
            agents=bool(o.agent_ids),
            shard=o.shard is not None,
            recent=bool(cursor.recent),
        )

    def _params(self, cursor: Cursor, horizon: datetime, n: int) -> dict[str, Any]:
        o = self._options
        lo_ts, lo_id = cursor.lower_bound(horizon)
        params: dict[str, Any] = {"lo_ts": lo_ts, "lo_id": lo_id, "n": n}
        if o.since is not None:
            params["since"] = o.since
        if o.until is not None:
            params["until"] = o.until
        if o.agent_ids:
            params["agents"] = list(o.agent_ids)
        if cursor.recent:
            params["recent"] = list(cursor.recent)
        if o.shard is not None:
            params["shard"], params["shards"] = o.shard
        return params

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Events oldest first, right after ``resume`` (see the module docstring).

        Raises:
            DatabaseConfigError: the database cannot be used as configured (exit 2).
            DatabaseError: a failure at run time (connection lost, a query timed out).
        """
        try:
            cursor = Cursor.decode(resume)
        except ValueError as exc:
            raise DatabaseConfigError(
                self._target, f"the saved position is not one of this source: {exc}"
            ) from None
        remaining = self._options.limit
        overlap = timedelta(seconds=self._options.overlap)
        while True:
            try:
                conn, queries = await self._connect()
                async for event in self._read_keys(conn, queries, cursor, overlap, remaining):
                    if isinstance(event, Found) and remaining is not None:
                        remaining -= 1
                    yield event
                    if remaining is not None and remaining <= 0:
                        # The cursor has moved past the whole batch; the limit stopped inside it.
                        yield CaughtUp(event.position)
                        return
            except psycopg.Error as exc:
                live = self._conn
                if live is None or live.broken or live.closed:
                    await self.aclose()
                    raise DatabaseError(
                        self._target, f"connection lost: {_first_line(exc)}"
                    ) from None
                raise self._query_error(exc) from None
            yield CaughtUp(cursor.encode())
            if not follow:
                return
            await asyncio.sleep(self._options.poll_interval)

    async def _read_keys(
        self, conn: _Conn, queries: Queries, cursor: Cursor, overlap: timedelta, limit: int | None
    ) -> AsyncIterator[Event]:
        """Key pages until one comes back short: everything committed so far, once."""
        page = self._options.key_page
        while True:
            # The horizon comes from the database's clock, the one that set created_at.
            now = await (await conn.execute("SELECT statement_timestamp()")).fetchone()
            assert now is not None
            horizon: datetime = now[0] - overlap
            cursor.prune(horizon)
            want = page if limit is None else min(page, limit)
            cur = await conn.execute(
                queries.keys(self._filters(cursor)), self._params(cursor, horizon, want)
            )
            keys: list[tuple[datetime, str, bool]] = await cur.fetchall()
            batch = self._options.batch
            for start in range(0, len(keys), batch):
                chunk = keys[start : start + batch]
                for event in await self._read_rows(conn, queries, chunk, cursor, horizon):
                    yield event
                if limit is not None:
                    limit -= len(chunk)
                    if limit <= 0:
                        return
            if len(keys) < want:
                return

    async def _read_rows(
        self,
        conn: _Conn,
        queries: Queries,
        keys: Sequence[tuple[datetime, str, bool]],
        cursor: Cursor,
        horizon: datetime,
    ) -> Iterator[Event]:
        """One batch of keys as events, in key order (rows deleted meanwhile are passed over).

        The queries run here; the rows become records only as the caller takes each event, so
        one trace's parsed bodies are alive at a time, not a whole batch's: the garbage
        collector then never walks hundreds of 20 KB bodies (it cost a third of the source's
        CPU). A plain generator, not an async one: one coroutine frame fewer to resume per
        event.
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
                    self._target,
                )
            cur = await conn.execute(queries.metadata_rows, {"ids": meta})
            for row in await cur.fetchall():
                rows[row[0]] = (row, False)

        run_ids: set[str] = set()
        agent_ids: set[str] = set()
        known = self._agents
        for row, _bodies in rows.values():
            run_id, agent_id = row_ids(row)
            if run_id:
                run_ids.add(run_id)
            if agent_id and agent_id not in known:
                agent_ids.add(agent_id)
        runs = await self._runs(conn, queries, run_ids)
        await self._load_agents(conn, queries, agent_ids)
        return self._events(keys, rows, runs, cursor, horizon)

    def _events(
        self,
        keys: Sequence[tuple[datetime, str, bool]],
        rows: dict[str, tuple[tuple[Any, ...], bool]],
        runs: dict[str, Run],
        cursor: Cursor,
        horizon: datetime,
    ) -> Iterator[Event]:
        agents = self._agents
        origin = self.name
        for created_at, record_id, _meta in keys:
            found = rows.pop(record_id, None)
            if found is None:
                continue  # deleted (or soft-deleted) between the key page and this read
            row, bodies = found
            try:
                trace, step, metrics = trace_from_row(row, bodies=bodies)
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

    async def _runs(self, conn: _Conn, queries: Queries, ids: set[str]) -> dict[str, Run]:
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

    async def _load_agents(self, conn: _Conn, queries: Queries, ids: set[str]) -> None:
        if not ids:
            return
        if len(self._agents) + len(ids) > _AGENT_CACHE_MAX:
            self._agents.clear()
        cur = await conn.execute(queries.agents, {"ids": list(ids)})
        for row in await cur.fetchall():
            try:
                self._agents[row[0]] = agent_from_row(row)
            except ValueError as exc:
                _logger.warning(
                    "agent %s: unreadable row, its traces go without it: %s", row[0], exc
                )

    # --- check --------------------------------------------------------------------------------
    async def count(self) -> int:
        """The rows the window holds (all shards), for a progress bar's total: one count query.

        Raises:
            DatabaseConfigError, DatabaseError: as :meth:`read`.
        """
        conn, queries = await self._connect()
        try:
            start = Cursor()
            filters = self._filters(start)
            params = self._params(start, start.created_at, self._options.key_page)
            row = await (
                await conn.execute(queries.count(filters, "provider_traces"), params)
            ).fetchone()
            total = int(row[0]) if row else 0
            if queries.metadata:
                mrow = await (
                    await conn.execute(queries.count(filters, "provider_trace_metadata"), params)
                ).fetchone()
                total += int(mrow[0]) if mrow else 0
        except psycopg.Error as exc:
            raise self._query_error(exc) from None
        limit = self._options.limit
        return total if limit is None else min(total, limit)

    async def check(self) -> PostgresCheck:
        """Reachability, the schema, the rows in the window and what an index would save.

        Runs the first key page under ``EXPLAIN ANALYZE`` (a read: nothing is written and no
        index is created) to say what a page costs without an index on ``created_at``.

        Raises:
            DatabaseConfigError, DatabaseError: as :meth:`read`.
        """
        conn, queries = await self._connect()
        try:
            version_row = await (await conn.execute("SHOW server_version")).fetchone()
            start = Cursor()
            filters = self._filters(start)
            params = self._params(start, start.created_at, self._options.key_page)
            row = await (
                await conn.execute(queries.count(filters, "provider_traces"), params)
            ).fetchone()
            traces, nulls = (int(row[0]), int(row[1])) if row else (0, 0)
            metadata = 0
            if queries.metadata:
                mrow = await (
                    await conn.execute(queries.count(filters, "provider_trace_metadata"), params)
                ).fetchone()
                metadata = int(mrow[0]) if mrow else 0
            index = await _created_at_index(conn)
            plan_rows = await (
                await conn.execute(
                    sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(queries.keys(filters)),
                    params,
                )
            ).fetchone()
        except psycopg.Error as exc:
            raise self._query_error(exc) from None
        plan = plan_rows[0][0] if plan_rows else {}
        page_ms = float(plan.get("Execution Time", 0.0)) if isinstance(plan, dict) else None
        scans = _node_types(plan.get("Plan", {})) if isinstance(plan, dict) else set()
        advice: str | None = None
        if index is None:
            pages = max(1, -(-(traces + metadata) // self._options.key_page))
            total = (page_ms or 0.0) * pages / 1000
            kind = "sequential scan" if "Seq Scan" in scans else "scan"
            advice = (
                f"no index on provider_traces.created_at: each key page of"
                f" {self._options.key_page} is a {kind}"
                f" of the table ({page_ms or 0:.1f} ms now; ~{pages} pages,"
                f" ~{total:.1f} s of database time for the window). An index would make pages"
                f" range scans: {RECOMMENDED_INDEX} (the exporter never creates it)"
            )
        return PostgresCheck(
            target=self._target,
            server_version=str(version_row[0]) if version_row else "?",
            traces=traces,
            metadata_rows=metadata,
            null_created_at=nulls,
            index=index,
            advice=advice,
            key_page_ms=page_ms,
            plan=str(sorted(scans)),
        )


async def _created_at_index(conn: _Conn) -> str | None:
    """The name of an index on ``provider_traces`` whose first column is ``created_at``."""
    cur = await conn.execute(
        "SELECT i.relname FROM pg_index x"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]"
        " WHERE t.relname = 'provider_traces' AND t.relnamespace = current_schema()::regnamespace"
        " AND a.attname = 'created_at' LIMIT 1"
    )
    row = await cur.fetchone()
    return str(row[0]) if row else None


def _node_types(node: Any) -> set[str]:
    if not isinstance(node, dict):
        return set()
    out = {str(node.get("Node Type", ""))}
    for child in node.get("Plans", ()) or ():
        out |= _node_types(child)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _without_secret(text: str, dsn: str) -> str:
    """``text`` with the DSN's password removed, should libpq ever echo it back."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(driver_dsn(dsn)).get("password")
    except psycopg.Error:
        return text
    return text.replace(str(password), "***") if password else text
