"""What the PostgreSQL source reads, and the query parameters those choices make.

The options are one value shared by the connection, the reader and the report; the filters and
parameters are built here once, so a key page, a count and a ``check``'s plan ask the same
question of the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._pg_position import Cursor
from ._pg_schema import Filters

__all__ = ["PostgresOptions", "query_filters", "query_params"]


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


def query_filters(options: PostgresOptions, cursor: Cursor) -> Filters:
    """Which clauses a key or count query carries for these options at this position."""
    return Filters(
        since=options.since is not None,
        until=options.until is not None,
        agents=bool(options.agent_ids),
        shard=options.shard is not None,
        recent=bool(cursor.recent),
    )


def query_params(
    options: PostgresOptions, cursor: Cursor, horizon: datetime, n: int
) -> dict[str, Any]:
    """The values of the clauses :func:`query_filters` chose, and a page of ``n`` keys."""
    lo_ts, lo_id = cursor.lower_bound(horizon)
    params: dict[str, Any] = {"lo_ts": lo_ts, "lo_id": lo_id, "n": n}
    if options.since is not None:
        params["since"] = options.since
    if options.until is not None:
        params["until"] = options.until
    if options.agent_ids:
        params["agents"] = list(options.agent_ids)
    if cursor.recent:
        params["recent"] = list(cursor.recent)
    if options.shard is not None:
        params["shard"], params["shards"] = options.shard
    return params
