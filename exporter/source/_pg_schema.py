"""Letta's tables as the PostgreSQL source reads them, and the SQL it sends.

The schema is checked once per connection against ``information_schema``: a table or column the
source cannot do without (:data:`REQUIRED`) raises
:class:`~exporter.errors.DatabaseConfigError` naming it, so an older or newer Letta schema is one
clear line rather than an SQL error halfway through an export. Optional columns (added or dropped
across Letta versions) are read as ``NULL`` when absent.

Reads are set-based, never one query per trace:

1. a *key page*: ``(created_at, id)`` of the next rows in keyset order, from ``provider_traces``
   (and ``provider_trace_metadata`` for servers that store metadata only). ``provider_traces``
   has no index on ``created_at``, so this is one sequential scan of the table's narrow heap
   (the bodies are TOASTed and not touched) with a top-N sort; pages of many keys keep the
   number of scans small. With an index on ``(created_at, id)`` it becomes an index range scan.
2. the *rows* of a batch of those ids with their steps and step metrics (primary-key lookups);
3. the batch's distinct runs and agents (primary-key lookups; agents are also cached).

Bodies are fetched as ``text`` and parsed once in Python (no json decoding in the driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from psycopg import AsyncConnection, sql

from ..errors import DatabaseConfigError

__all__ = [
    "OPTIONAL",
    "REQUIRED",
    "Queries",
    "Schema",
    "load_schema",
]

#: Columns the source cannot do without, per table.
REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "provider_traces": (
        "id",
        "request_json",
        "response_json",
        "step_id",
        "agent_id",
        "call_type",
        "run_id",
        "created_at",
        "is_deleted",
    ),
    "steps": ("id", "run_id", "agent_id", "is_deleted"),
    "step_metrics": ("id", "is_deleted"),
    "runs": ("id", "status", "agent_id", "created_at", "is_deleted"),
    "agents": ("id", "name", "is_deleted"),
}

#: Columns read when present (``NULL`` otherwise), per table; ``provider_trace_metadata`` and
#: ``agents_tags`` are optional tables.
OPTIONAL: Final[Mapping[str, tuple[str, ...]]] = {
    "provider_traces": (
        "agent_tags",
        "source",
        "org_id",
        "user_id",
        "compaction_settings",
        "llm_config",
        "updated_at",
        "_created_by_id",
        "_last_updated_by_id",
    ),
    "steps": (
        "origin",
        "organization_id",
        "provider_id",
        "provider_name",
        "provider_category",
        "model",
        "model_handle",
        "model_endpoint",
        "context_window_limit",
        "completion_tokens",
        "prompt_tokens",
        "total_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "completion_tokens_details",
        "prompt_tokens_details",
        "stop_reason",
        "status",
        "error_type",
        "error_data",
        "tags",
        "tid",
        "trace_id",
        "request_id",
        "feedback",
        "project_id",
        "created_at",
    ),
    "step_metrics": (
        "organization_id",
        "provider_id",
        "run_id",
        "agent_id",
        "project_id",
        "template_id",
        "base_template_id",
        "step_start_ns",
        "llm_request_start_ns",
        "llm_request_ns",
        "tool_execution_ns",
        "step_ns",
    ),
    "runs": (
        "completed_at",
        "conversation_id",
        "base_template_id",
        "background",
        "metadata_",
        "request_config",
        "stop_reason",
        "ttft_ns",
        "total_duration_ns",
    ),
    "agents": ("agent_type", "project_id", "description"),
    "provider_trace_metadata": (
        "id",
        "created_at",
        "step_id",
        "agent_id",
        "agent_tags",
        "call_type",
        "run_id",
        "source",
        "org_id",
        "user_id",
        "updated_at",
        "is_deleted",
        "_created_by_id",
        "_last_updated_by_id",
    ),
    "agents_tags": ("agent_id", "tag"),
}

#: Columns of json type, fetched as text and parsed once.
JSON_COLUMNS: Final = frozenset(
    {
        "request_json",
        "response_json",
        "agent_tags",
        "compaction_settings",
        "llm_config",
        "completion_tokens_details",
        "prompt_tokens_details",
        "error_data",
        "tags",
        "metadata_",
        "request_config",
    }
)

#: Output column names of the trace row query, in order (prefixes: s_ step, m_ metrics).
TRACE_COLUMNS: Final = REQUIRED["provider_traces"] + OPTIONAL["provider_traces"]
STEP_COLUMNS: Final = REQUIRED["steps"] + OPTIONAL["steps"]
METRICS_COLUMNS: Final = REQUIRED["step_metrics"] + OPTIONAL["step_metrics"]
RUN_COLUMNS: Final = REQUIRED["runs"] + OPTIONAL["runs"]
AGENT_COLUMNS: Final = REQUIRED["agents"] + OPTIONAL["agents"]


@dataclass(frozen=True, slots=True)
class Schema:
    """Which of the tables and columns the source reads exist in this database."""

    columns: Mapping[str, frozenset[str]]

    def has(self, table: str, column: str | None = None) -> bool:
        cols = self.columns.get(table)
        return cols is not None and (column is None or column in cols)

    @property
    def metadata_table(self) -> bool:
        """Whether ``provider_trace_metadata`` is there with every column the source reads."""
        return all(
            self.has("provider_trace_metadata", c) for c in OPTIONAL["provider_trace_metadata"]
        )


async def load_schema(conn: AsyncConnection[tuple[object, ...]], target: str) -> Schema:
    """Read the columns of the tables the source uses; raise if one it needs is missing.

    Raises:
        DatabaseConfigError: a required table or column is missing (names every one of them).
    """
    tables = sorted(set(REQUIRED) | set(OPTIONAL))
    cur = await conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ANY(%s)",
        (tables,),
    )
    found: dict[str, set[str]] = {}
    for table, column in await cur.fetchall():
        found.setdefault(str(table), set()).add(str(column))
    missing: list[str] = []
    for table, columns in REQUIRED.items():
        if table not in found:
            missing.append(f"table {table}")
            continue
        missing.extend(f"column {table}.{c}" for c in columns if c not in found[table])
    if missing:
        raise DatabaseConfigError(
            target,
            f"not a Letta database this exporter can read (schema search path "
            f"{await _search_path(conn)}): missing {', '.join(missing)}",
        )
    return Schema({t: frozenset(c) for t, c in found.items()})


async def _search_path(conn: AsyncConnection[tuple[object, ...]]) -> str:
    cur = await conn.execute("SELECT current_schema()")
    row = await cur.fetchone()
    return str(row[0]) if row else "?"


def _column(schema: Schema, table: str, alias: str, column: str, prefix: str) -> sql.Composable:
    name = sql.Identifier(f"{prefix}{column}")
    if not schema.has(table, column):
        return sql.SQL("NULL AS {}").format(name)
    ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))
    if column in JSON_COLUMNS:
        ref = sql.SQL("{}::text").format(ref)
    elif column == "status" and table == "steps":
        ref = sql.SQL("lower({}::text)").format(ref)  # an enum (SUCCESS, ...); the API says success
    return sql.SQL("{} AS {}").format(ref, name)


def _columns(
    schema: Schema, table: str, alias: str, columns: tuple[str, ...], prefix: str = ""
) -> sql.Composable:
    return sql.SQL(", ").join(_column(schema, table, alias, c, prefix) for c in columns)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the key page selects, besides the keyset position."""

    since: bool
    until: bool
    agents: bool
    shard: bool
    recent: bool


class Queries:
    """The SQL for one database's schema, built once after :func:`load_schema`."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.metadata = schema.metadata_table
        self.rows = sql.SQL(
            "SELECT {t}, {s}, {m} FROM provider_traces t"
            " LEFT JOIN steps s ON s.id = t.step_id AND NOT s.is_deleted"
            " LEFT JOIN step_metrics m ON m.id = t.step_id AND NOT m.is_deleted"
            " WHERE t.id = ANY(%(ids)s) AND NOT t.is_deleted"
        ).format(
            t=_columns(schema, "provider_traces", "t", TRACE_COLUMNS),
            s=_columns(schema, "steps", "s", STEP_COLUMNS, "s_"),
            m=_columns(schema, "step_metrics", "m", METRICS_COLUMNS, "m_"),
        )
        meta_columns = [
            _column(schema, "provider_trace_metadata", "t", c, "")
            if schema.has("provider_trace_metadata", c)
            else sql.SQL("NULL AS {}").format(sql.Identifier(c))
            for c in TRACE_COLUMNS
        ]
        self.metadata_rows = sql.SQL(
            "SELECT {t}, {s}, {m} FROM provider_trace_metadata t"
            " LEFT JOIN steps s ON s.id = t.step_id AND NOT s.is_deleted"
            " LEFT JOIN step_metrics m ON m.id = t.step_id AND NOT m.is_deleted"
            " WHERE t.id = ANY(%(ids)s) AND NOT t.is_deleted"
        ).format(
            t=sql.SQL(", ").join(
                sql.SQL("NULL AS {}").format(sql.Identifier(c))
                if c in ("request_json", "response_json", "compaction_settings", "llm_config")
                else col
                for c, col in zip(TRACE_COLUMNS, meta_columns, strict=True)
            ),
            s=_columns(schema, "steps", "s", STEP_COLUMNS, "s_"),
            m=_columns(schema, "step_metrics", "m", METRICS_COLUMNS, "m_"),
        )
        self.runs = sql.SQL(
            "SELECT {r} FROM runs r WHERE r.id = ANY(%(ids)s) AND NOT r.is_deleted"
        ).format(r=_columns(schema, "runs", "r", RUN_COLUMNS))
        tags = (
            sql.SQL(
                "(SELECT coalesce(array_agg(g.tag ORDER BY g.tag), '{}') FROM agents_tags g"
                " WHERE g.agent_id = a.id) AS tags"
            )
            if schema.has("agents_tags", "tag")
            else sql.SQL("NULL AS tags")
        )
        self.agents = sql.SQL(
            "SELECT {a}, {tags} FROM agents a WHERE a.id = ANY(%(ids)s) AND NOT a.is_deleted"
        ).format(a=_columns(schema, "agents", "a", AGENT_COLUMNS), tags=tags)

    def keys(self, filters: Filters) -> sql.Composed:
        """The next key page after ``(%(lo_ts)s, %(lo_id)s)``, oldest first, ``%(n)s`` rows."""
        parts = [
            sql.SQL("NOT t.is_deleted"),
            sql.SQL("(t.created_at, t.id) > (%(lo_ts)s, %(lo_id)s)"),
        ]
        if filters.since:
            parts.append(sql.SQL("t.created_at >= %(since)s"))
        if filters.until:
            parts.append(sql.SQL("t.created_at < %(until)s"))
        if filters.agents:
            parts.append(sql.SQL("t.agent_id = ANY(%(agents)s)"))
        if filters.recent:
            parts.append(sql.SQL("NOT (t.id = ANY(%(recent)s))"))
        if filters.shard:
            # hashtext is stable for a server version; & keeps it non-negative without abs()'s
            # overflow on the most negative int4.
            # By run (else trace) id: a run's traces, and so its parent span, stay in one shard.
            parts.append(
                sql.SQL(
                    "(hashtext(coalesce(t.run_id, t.id)) & 2147483647) %% %(shards)s = %(shard)s"
                )
            )
        where = sql.SQL(" AND ").join(parts)
        traces = sql.SQL("SELECT t.created_at, t.id, false AS meta FROM provider_traces t WHERE {}")
        query = traces.format(where)
        if self.metadata:
            meta = sql.SQL(
                "SELECT t.created_at, t.id, true AS meta FROM provider_trace_metadata t"
                " WHERE {} AND NOT EXISTS (SELECT 1 FROM provider_traces p WHERE p.id = t.id)"
            ).format(where)
            query = sql.SQL("{} UNION ALL {}").format(query, meta)
        return sql.SQL("{} ORDER BY 1, 2 LIMIT %(n)s").format(query)

    def count(self, filters: Filters, table: str) -> sql.Composed:
        """How many live rows of ``table`` the window holds (for ``check``)."""
        parts = [sql.SQL("NOT t.is_deleted")]
        if filters.since:
            parts.append(sql.SQL("t.created_at >= %(since)s"))
        if filters.until:
            parts.append(sql.SQL("t.created_at < %(until)s"))
        if filters.agents:
            parts.append(sql.SQL("t.agent_id = ANY(%(agents)s)"))
        return sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE t.created_at IS NULL) FROM {} t WHERE {}"
        ).format(sql.Identifier(table), sql.SQL(" AND ").join(parts))
