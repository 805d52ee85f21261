"""The builders that turn Settings into the socket and database sources and the GenAI metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter import wiring
from exporter.convert import build_resource
from exporter.errors import ConfigError
from exporter.settings import Settings
from exporter.source._contract import CaughtUp, Unreadable
from testkit import OtlpReceiver
from tests._metric_spans import call_span

RESOURCE = build_resource("letta")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("LETTA_EXPORTER_", "OTEL_")) or upper in {
            "LETTA_BASE_URL",
            "LETTA_API_KEY",
            "LETTA_PG_URI",
        }:
            monkeypatch.delenv(name)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket address holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the socket ---------------------------------------------------------------------------------


async def test_socket_source_listens_with_the_settings_mode_cap_and_journal(
    short_dir: Path,
) -> None:
    settings = Settings.load(
        socket=short_dir / "run" / "t.sock",
        socket_mode="0600",
        socket_max_record_bytes="1KiB",
        journal_max_bytes="1MiB",
        journal_commit_ms=1,
        state_path=short_dir / "state.json",
    )
    source = wiring.socket_source(settings)
    assert source.journal_dir == short_dir / "state.json.journal"
    await source.start()
    try:
        assert stat.S_IMODE(os.stat(settings.socket or "").st_mode) == 0o600
        assert source.journal.options.max_bytes == 1 << 20

        def send(data: bytes) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(settings.socket))
                sock.sendall(data)

        await asyncio.to_thread(send, b"x" * 2000 + b"\n")
        events = []

        async def take() -> None:
            async for event in source.read(resume=None, follow=True):
                if not isinstance(event, CaughtUp):
                    events.append(event)
                    return

        await asyncio.wait_for(take(), 10)
        (event,) = events
        assert isinstance(event, Unreadable)
        assert event.reason == "too_large"  # the 1 KiB cap from the settings
    finally:
        await source.aclose()
    assert (short_dir / "state.json.journal").is_dir()


def test_socket_source_needs_a_socket() -> None:
    with pytest.raises(ConfigError, match="socket"):
        wiring.socket_source(Settings.load())


# --- the database -------------------------------------------------------------------------------

_URL = "postgresql://reader:pw@db:5432/letta"


def test_postgres_options_of_the_one_shot_window() -> None:
    settings = Settings.load(
        source="postgres",
        database_url=_URL,
        since="2026-01-01T00:00:00Z",
        until="2026-02-01T00:00:00Z",
        agent_ids=["agent-1", "agent-2"],
        limit=10,
        shard="1/4",
        database_statement_timeout=5,
        database_poll_seconds=2,
        database_key_page=1000,
        database_batch=50,
        database_overlap_seconds=7,
        database_connect_timeout=3,
    )
    options = wiring.postgres_options(settings, window=True)
    assert options.dsn == _URL
    assert options.since == datetime(2026, 1, 1, tzinfo=UTC)
    assert options.until == datetime(2026, 2, 1, tzinfo=UTC)
    assert options.agent_ids == ("agent-1", "agent-2")
    assert (options.limit, options.shard) == (10, (1, 4))
    assert (options.statement_timeout, options.poll_interval) == (5, 2)
    assert (options.key_page, options.batch, options.overlap, options.connect_timeout) == (
        1000,
        50,
        7,
        3,
    )
    sidecar = wiring.postgres_options(settings, window=False)
    assert (sidecar.until, sidecar.limit) == (None, None)
    assert sidecar.since == options.since  # where the sidecar's first start begins
    source = wiring.postgres_source(settings, window=True)
    assert source.target == "postgresql://reader:***@db:5432/letta"


def test_postgres_options_need_a_url() -> None:
    with pytest.raises(ConfigError, match="database_url"):
        wiring.postgres_options(Settings.load(), window=True)


# --- prices ---------------------------------------------------------------------------------------


def test_convert_options_carry_the_users_prices(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."My-Model"]\ninput = 1.5\noutput = 6\n', encoding="utf-8")
    options = wiring.convert_options(Settings.load(prices_file=prices))
    assert options.prices is not None
    found = options.prices.find("my-model", "openai")
    assert found is not None
    assert (float(found.input), float(found.output)) == (1.5, 6.0)
    assert wiring.convert_options(Settings.load()).prices is None


# --- GenAI metrics --------------------------------------------------------------------------------


def test_no_metrics_without_the_otlp_sink() -> None:
    assert wiring.genai_metrics(Settings.load(), RESOURCE) is None
    assert wiring.genai_metrics(Settings.load(sink="console"), RESOURCE) is None
    off = Settings.load(otlp_endpoint="http://127.0.0.1:4318", metrics=False)
    assert wiring.genai_metrics(off, RESOURCE) is None


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_metrics_go_to_the_traces_collector_counted_in_a_ledger_per_shard(
    tmp_path: Path, protocol: str
) -> None:
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_base_endpoint
        settings = Settings.load(
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            otlp_headers="x-api-key=collector-key",
            metrics_temporality="delta",
            metrics_agent_attribute=True,
            state_path=tmp_path / "state.json",
            shard="0/2",
        )
        metrics = wiring.genai_metrics(settings, RESOURCE)
        assert metrics is not None
        try:
            assert metrics.record_delivered([call_span(1)]) == 1
        finally:
            metrics.shutdown()
        points = receiver.points("gen_ai.client.token.usage")
        assert points
        assert {p.temporality for p in points} == {"delta"}
        assert points[0].attributes["gen_ai.agent.id"] == "agent-1"
    ledger = tmp_path / "state.json.metrics-ledger.shard-0-of-2"
    assert ledger.is_file()
    assert len(ledger.read_text().split()) == 1


def test_the_database_options_never_show_the_password() -> None:
    settings = Settings.load(database_url="postgresql://reader:pg-SECRET-pw@db:5432/letta")
    options = wiring.postgres_options(settings, window=True)
    assert "SECRET" not in repr(options)
    assert "SECRET" not in repr(wiring.postgres_source(settings, window=False).target)


def test_the_database_driver_is_imported_only_when_the_database_source_is_used() -> None:
    import subprocess
    import sys

    code = "import sys, exporter.commands, exporter.wiring; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
