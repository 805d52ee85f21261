"""What ``check`` and a progress bar ask of the database: the rows in the window, and their cost.

Both run count queries over the same filters as a key page (:func:`._pg_options.query_filters`);
``check`` also runs the first key page under ``EXPLAIN ANALYZE`` (a read: nothing is written and
no index is created) to say what a page costs without an index on ``created_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ._pg_connection import RECOMMENDED_INDEX, Conn, PgConnection
from ._pg_options import PostgresOptions, query_filters, query_params
from ._pg_position import Cursor

__all__ = ["PostgresCheck", "check_database", "count_traces"]


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


async def count_traces(connection: PgConnection, options: PostgresOptions) -> int:
    """The rows the window holds (all shards, at most ``limit``): one count query per table.

    Raises:
        DatabaseConfigError, DatabaseError: as the source's ``read``.
    """
    conn, queries = await connection.open()
    try:
        start = Cursor()
        filters = query_filters(options, start)
        params = query_params(options, start, start.created_at, options.key_page)
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
        raise connection.query_error(exc) from None
    limit = options.limit
    return total if limit is None else min(total, limit)


async def check_database(connection: PgConnection, options: PostgresOptions) -> PostgresCheck:
    """Reachability, the schema, the rows in the window and what an index would save.

    Raises:
        DatabaseConfigError, DatabaseError: as the source's ``read``.
    """
    conn, queries = await connection.open()
    try:
        version_row = await (await conn.execute("SHOW server_version")).fetchone()
        start = Cursor()
        filters = query_filters(options, start)
        params = query_params(options, start, start.created_at, options.key_page)
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
        raise connection.query_error(exc) from None
    plan = plan_rows[0][0] if plan_rows else {}
    page_ms = float(plan.get("Execution Time", 0.0)) if isinstance(plan, dict) else None
    scans = _node_types(plan.get("Plan", {})) if isinstance(plan, dict) else set()
    advice: str | None = None
    if index is None:
        pages = max(1, -(-(traces + metadata) // options.key_page))
        total = (page_ms or 0.0) * pages / 1000
        kind = "sequential scan" if "Seq Scan" in scans else "scan"
        advice = (
            f"no index on provider_traces.created_at: each key page of"
            f" {options.key_page} is a {kind}"
            f" of the table ({page_ms or 0:.1f} ms now; ~{pages} pages,"
            f" ~{total:.1f} s of database time for the window). An index would make pages"
            f" range scans: {RECOMMENDED_INDEX} (the exporter never creates it)"
        )
    return PostgresCheck(
        target=connection.target,
        server_version=str(version_row[0]) if version_row else "?",
        traces=traces,
        metadata_rows=metadata,
        null_created_at=nulls,
        index=index,
        advice=advice,
        key_page_ms=page_ms,
        plan=str(sorted(scans)),
    )


async def _created_at_index(conn: Conn) -> str | None:
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
