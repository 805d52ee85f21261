"""The PostgreSQL source's one session: opened read-only, its schema read once, its errors named.

The session is opened with ``default_transaction_read_only=on``, a ``statement_timeout``, a
``lock_timeout`` and an idle-in-transaction timeout, so nothing the source sends can write or
hold a lock for long. Every driver error leaves this module as a :class:`DatabaseConfigError`
(the database cannot be used as configured: stop and wait) or a :class:`DatabaseError` (a run
time failure), worded with the masked target and never the password.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors

from ..errors import DatabaseConfigError, DatabaseError
from ._pg_dsn import driver_dsn, mask_dsn
from ._pg_schema import Queries, load_schema

__all__ = ["RECOMMENDED_INDEX", "Conn", "PgConnection", "first_line"]

#: The index that turns each key page from a sequential scan into an index range scan.
RECOMMENDED_INDEX: Final = (
    "CREATE INDEX CONCURRENTLY ix_provider_traces_created_at_id ON provider_traces (created_at, id)"
)
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class PgConnection:
    """A lazily opened read-only session and the schema's queries, reopened after a loss."""

    def __init__(self, dsn: str, *, statement_timeout: float, connect_timeout: float) -> None:
        self._dsn = dsn
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._target = mask_dsn(dsn)
        self._conn: Conn | None = None
        self._queries: Queries | None = None

    @property
    def target(self) -> str:
        """The database as it may be printed (password masked)."""
        return self._target

    async def open(self) -> tuple[Conn, Queries]:
        """The live session and its queries, connecting (and reading the schema) if needed.

        Raises:
            DatabaseConfigError: refused login, unknown database, bad URL, schema mismatch.
            DatabaseError: the server cannot be reached.
        """
        if self._conn is not None and not self._conn.closed and self._queries is not None:
            return self._conn, self._queries
        timeout = self._statement_timeout
        settings = (
            "-c default_transaction_read_only=on"
            f" -c statement_timeout={int(timeout * 1000)}"
            " -c lock_timeout=5000"
            f" -c idle_in_transaction_session_timeout={int(max(timeout, 60) * 1000)}"
        )
        try:
            conn = await psycopg.AsyncConnection.connect(
                driver_dsn(self._dsn),
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="letta-otel-exporter",
                options=settings,
            )
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except psycopg.ProgrammingError as exc:  # an invalid connection string
            raise DatabaseConfigError(
                self._target, f"invalid connection string: {first_line(exc)}"
            ) from None
        try:
            queries = Queries(await load_schema(conn, self._target))
        except psycopg.Error as exc:
            await conn.close()
            raise self.query_error(exc) from None
        except BaseException:
            await conn.close()
            raise
        self._conn, self._queries = conn, queries
        return conn, queries

    def _connect_error(self, exc: psycopg.OperationalError) -> DatabaseError:
        text = first_line(exc)
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
        return DatabaseError(self._target, f"cannot connect: {_without_secret(text, self._dsn)}")

    def query_error(self, exc: psycopg.Error) -> DatabaseError:
        """What a failed query means for the caller: configuration (stop) or run time."""
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
            return DatabaseConfigError(self._target, f"schema mismatch: {first_line(exc)}")
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return DatabaseConfigError(self._target, f"permission denied: {first_line(exc)}")
        if isinstance(exc, pg_errors.QueryCanceled):
            return DatabaseError(
                self._target,
                f"a query ran past statement_timeout ({self._statement_timeout:g} s);"
                f" a smaller key page or an index would help: {RECOMMENDED_INDEX}",
            )
        return DatabaseError(self._target, f"query failed: {first_line(exc)}")

    async def read_error(self, exc: psycopg.Error) -> DatabaseError:
        """:meth:`query_error`, or "connection lost" (and the session dropped) when it broke."""
        live = self._conn
        if live is None or live.broken or live.closed:
            await self.aclose()
            return DatabaseError(self._target, f"connection lost: {first_line(exc)}")
        return self.query_error(exc)

    async def aclose(self) -> None:
        conn, self._conn, self._queries = self._conn, None, None
        if conn is not None and not conn.closed:
            await conn.close()


def first_line(exc: BaseException) -> str:
    """The first line of a driver error (its detail and hint lines can quote the query)."""
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
