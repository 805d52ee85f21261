"""A real PostgreSQL for the tests: find the server, make a database of its own, load the dump.

The server comes from ``EXPORTER_TEST_PG_DSN`` (``.ci/postgres.sh`` prints it), else the
role that script makes on the local server. Without a server the tests skip with the reason;
under ``CI=true`` they fail instead (a CI that silently skips them proves nothing).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DUMP = Path(__file__).parent / "fixtures" / "letta-0.16.8" / "postgres" / "letta.sql"
LOCAL_DSN = "postgresql://letta_exporter_test:letta_exporter_test@127.0.0.1:5432/postgres"


def server_dsn() -> str:
    """The maintenance DSN, or skip (fail under CI) with the reason."""
    dsn = os.environ.get("EXPORTER_TEST_PG_DSN") or LOCAL_DSN
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        reason = (
            f"no PostgreSQL for the database tests ({type(exc).__name__}:"
            f" {str(exc).strip().splitlines()[0] if str(exc).strip() else ''});"
            ' run `eval "$(bash .ci/postgres.sh)"` as root'
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return dsn


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def load_dump(dsn: str, path: Path = DUMP) -> None:
    """Run a plain-SQL ``pg_dump`` file (statements and ``COPY ... FROM stdin`` blocks)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        statement: list[str] = []
        lines = iter(path.read_text(encoding="utf-8").splitlines(keepends=True))
        for line in lines:
            if not statement and (
                line.startswith("--") or line.startswith("\\") or not line.strip()
            ):
                continue  # comments and psql meta-commands (\restrict)
            statement.append(line)
            if not line.rstrip().endswith(";"):
                continue
            text = "".join(statement)
            statement = []
            if text.startswith("COPY ") and text.rstrip().endswith("FROM stdin;"):
                with conn.cursor() as cur, cur.copy(text.rstrip().rstrip(";")) as copy:
                    for data in lines:
                        if data == "\\.\n" or data == "\\.":
                            break
                        copy.write(data)
                continue
            conn.execute(text)
        # The dump empties search_path for its session only; nothing to undo.


@contextmanager
def scratch_database(prefix: str = "letta_test") -> Iterator[str]:
    """A new empty database (random name), dropped afterwards; yields its DSN."""
    admin = server_dsn()
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def letta_database() -> Iterator[str]:
    """A database of its own holding the recorded Letta dump; yields its DSN."""
    with scratch_database() as dsn:
        load_dump(dsn)
        yield dsn
