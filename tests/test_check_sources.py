"""`check` with the socket and the database: what it reports, over a real socket and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from exporter import commands, wiring
from exporter.settings import Settings
from exporter.source._contract import CaughtUp

from .conftest import LETTA
from .pg_support import letta_database, scratch_database, server_dsn

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
RECORD = (LETTA / "socket" / "records.ndjson").read_text().splitlines()[0]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("LETTA_", "OTEL_")):
            monkeypatch.delenv(name)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket address holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ck", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def offline(tmp: Path, **flags: object) -> Settings:
    """Settings whose sink and checkpoint are local files, so only the part under test can fail."""
    return Settings.load(
        sink="file",
        output=tmp / "out.jsonl",
        state_path=tmp / "state.json",
        **flags,
    )


def letta_send(path: Path, line: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")


# --- the socket ---------------------------------------------------------------------------------


async def test_check_sees_the_sidecars_listener_and_the_latest_record(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = offline(short_dir, socket=short_dir / "t.sock")
    # The sidecar's side: the same settings, listening and journaling.
    served = wiring.socket_source(settings)
    await served.start()
    try:
        # Letta has written nothing yet: a warning, not a failure.
        capsys.readouterr()
        assert await commands._check(_no_letta(settings))
        out = capsys.readouterr().out
        assert "WARN  socket: socket " in out
        assert "no record yet" in out
        assert "mode 0660" in out

        await asyncio.to_thread(letta_send, settings.socket, RECORD)  # type: ignore[arg-type]

        async def first() -> None:
            async for event in served.read(resume=None, follow=True):
                if not isinstance(event, CaughtUp):
                    return

        await asyncio.wait_for(first(), 10)
        assert await commands._check(_no_letta(settings))
        out = capsys.readouterr().out
        assert "ok    socket: " in out
        assert "accepting connections; latest record at" in out
        assert f"ok    journal: {settings.effective_journal_dir} (" in out
    finally:
        await served.aclose()
    # The sidecar stopped: its socket file is gone or stale; run would make a new one.
    assert await commands._check(_no_letta(settings))
    assert "WARN  socket:" in capsys.readouterr().out


def _no_letta(settings: Settings) -> Settings:
    # The socket part only: the API check is covered elsewhere, and needs a Letta.
    return settings.model_copy(update={"source": "file", "input": Path("-")})


async def test_check_fails_on_a_path_run_would_refuse(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (short_dir / "plain").write_text("not a socket")
    settings = offline(short_dir, socket=short_dir / "plain")
    assert not await commands._check(_no_letta(settings))
    assert f"FAIL  socket: {short_dir / 'plain'} is not a socket" in capsys.readouterr().out


async def test_check_fails_on_a_journal_it_cannot_write(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (short_dir / "file").write_text("")
    settings = offline(
        short_dir, socket=short_dir / "t.sock", journal_dir=short_dir / "file" / "journal"
    )
    assert not await commands._check(_no_letta(settings))
    out = capsys.readouterr().out
    assert "WARN  socket: no socket at" in out
    assert "FAIL  journal:" in out
    assert "is not a directory" in out


# --- the database -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with letta_database() as url:
        yield url


def url_of(dsn: str, **change: str) -> str:
    params = {**conninfo_to_dict(dsn), **change}
    return (
        f"postgresql://{params['user']}:{params['password']}@{params['host']}:{params['port']}"
        f"/{params['dbname']}"
    )


async def test_check_reports_the_database_window_and_the_missing_index(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of(dsn)
    password = conninfo_to_dict(dsn)["password"]
    settings = offline(tmp_path, source="postgres", database_url=url)
    assert await commands._check(settings)
    out = capsys.readouterr().out
    assert "ok    database: database postgresql://" in out
    assert ":***@" in out
    assert "ok    database: provider traces in the window: 53" in out
    assert "note    database: no index on provider_traces.created_at" in out
    assert "CREATE INDEX CONCURRENTLY" in out
    assert "ok    letta" not in out  # the API is not what this source reads
    assert f":{password}@" not in out


def cli_check(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
    base.update(
        LETTA_EXPORTER_STATE_PATH=str(tmp_path / "state.json"),
        LETTA_EXPORTER_SINK="file",
        LETTA_EXPORTER_OUTPUT=str(tmp_path / "out.jsonl"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def test_a_wrong_password_is_one_line_and_check_fails(dsn: str, tmp_path: Path) -> None:
    url = url_of(dsn, password="hunter2-wrong-SECRET")
    result = cli_check(["--source", "postgres"], tmp_path, LETTA_EXPORTER_DATABASE_URL=url)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "database" in x]
    assert line.startswith("FAIL  database: database postgresql://")
    assert "authentication refused" in line
    assert "SECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_database_url_flag_implies_the_source_and_is_never_printed(
    dsn: str, tmp_path: Path
) -> None:
    url = url_of(dsn, password="hunter2-wrong-SECRET")
    result = cli_check(["--database-url", url], tmp_path)
    assert result.returncode == 1
    assert "FAIL  database:" in result.stdout
    assert "SECRET" not in result.stdout + result.stderr


def test_lettas_own_variable_is_read_when_ours_is_unset(dsn: str, tmp_path: Path) -> None:
    result = cli_check(["--source", "postgres"], tmp_path, LETTA_PG_URI=url_of(dsn))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "provider traces in the window: 53" in result.stdout


def test_a_database_without_lettas_tables_is_a_schema_line(tmp_path: Path) -> None:
    server_dsn()
    with scratch_database() as empty:
        result = cli_check(["--source", "postgres"], tmp_path, LETTA_PG_URI=url_of(empty))
    assert result.returncode == 1
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert "FAIL  database: database postgresql://" in line
    assert "provider_traces" in line
    password = conninfo_to_dict(empty)["password"]
    assert f":{password}@" not in result.stdout + result.stderr


def test_a_json_summary_of_a_failed_database_export_holds_no_password(
    dsn: str, tmp_path: Path
) -> None:
    url = url_of(dsn, password="hunter2-wrong-SECRET")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "export", "--database-url", url, "--json"],
        env={**base, "LETTA_EXPORTER_STATE_PATH": str(tmp_path / "s.json")},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)["ok"] is False
    assert "SECRET" not in result.stdout + result.stderr


async def test_the_check_command_reads_the_socket_and_journal_flags(short_dir: Path) -> None:
    sock, journal = short_dir / "s" / "t.sock", short_dir / "j"
    served = wiring.socket_source(Settings.load(socket=sock, journal_dir=journal))
    await served.start()
    try:
        await asyncio.to_thread(letta_send, sock, RECORD)

        async def first() -> None:
            async for event in served.read(resume=None, follow=True):
                if not isinstance(event, CaughtUp):
                    return

        await asyncio.wait_for(first(), 10)
        result = await asyncio.to_thread(
            cli_check,
            ["--socket", str(sock), "--journal-dir", str(journal)],
            short_dir,
            LETTA_EXPORTER_SOURCE="file",
            LETTA_EXPORTER_INPUT="-",
        )
    finally:
        await served.aclose()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    socket: socket {sock}: accepting connections; latest record at" in result.stdout
    assert f"ok    journal: {journal} (" in result.stdout
