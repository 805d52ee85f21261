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

Parts: :mod:`._pg_options` (what to read), :mod:`._pg_connection` (the read-only session and
its errors), :mod:`._pg_reader` (the paged read) and :mod:`._pg_check` (``check`` and
``count``); this class composes them behind the source contract.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from ._contract import Event
from ._pg_check import PostgresCheck, check_database, count_traces
from ._pg_connection import RECOMMENDED_INDEX, Conn, PgConnection
from ._pg_options import PostgresOptions
from ._pg_reader import PgReader
from ._pg_rows import trace_from_row
from ._pg_schema import Queries

__all__ = ["RECOMMENDED_INDEX", "PostgresCheck", "PostgresOptions", "PostgresSource"]


class PostgresSource:
    """Provider traces from Letta's PostgreSQL, with their steps, metrics, runs and agents."""

    name = "postgres"

    def __init__(self, options: PostgresOptions, *, stop: asyncio.Event | None = None) -> None:
        """``stop``: when set, a following read ends its wait for new rows at once (the
        sidecar's shutdown), rather than at the next poll."""
        if options.shard is not None:
            index, count = options.shard
            if not 0 <= index < count:
                raise ValueError(f"shard {index}/{count}: index must be in 0..{count - 1}")
        self._options = options
        self._connection = PgConnection(
            options.dsn,
            statement_timeout=options.statement_timeout,
            connect_timeout=options.connect_timeout,
        )
        self._reader = PgReader(
            options, self._connection, origin=self.name, parse=trace_from_row, stop=stop
        )

    @property
    def target(self) -> str:
        """The database as it may be printed (password masked)."""
        return self._connection.target

    def stream_key(self) -> str:
        o = self._options
        if o.stream is not None:
            return o.stream
        parts = [
            self.target,
            o.since.isoformat() if o.since else "",
            o.until.isoformat() if o.until else "",
            ",".join(sorted(o.agent_ids)),
            f"{o.shard[0]}/{o.shard[1]}" if o.shard else "",
        ]
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
        return f"postgres:{digest}"

    async def _connect(self) -> tuple[Conn, Queries]:
        """The live session and its queries (the benchmark reads its backend pid through it)."""
        return await self._connection.open()

    def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Events oldest first, right after ``resume`` (see the module docstring).

        The reader's own generator, not one wrapped around it: no extra frame per event.

        Raises:
            DatabaseConfigError: the database cannot be used as configured (exit 2).
            DatabaseError: a failure at run time (connection lost, a query timed out).
        """
        return self._reader.read(resume=resume, follow=follow)

    async def count(self) -> int:
        """The rows the window holds (all shards), for a progress bar's total: one count query.

        Raises:
            DatabaseConfigError, DatabaseError: as :meth:`read`.
        """
        return await count_traces(self._connection, self._options)

    async def check(self) -> PostgresCheck:
        """Reachability, the schema, the rows in the window and what an index would save.

        Runs the first key page under ``EXPLAIN ANALYZE`` (a read: nothing is written and no
        index is created) to say what a page costs without an index on ``created_at``.

        Raises:
            DatabaseConfigError, DatabaseError: as :meth:`read`.
        """
        return await check_database(self._connection, self._options)

    async def aclose(self) -> None:
        await self._connection.aclose()
