"""``run --socket`` end to end: Letta-style pushes over a real Unix socket, the sidecar in a
subprocess, a real OTLP receiver (and the fake Letta for the API side)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from exporter.convert import span_id_for
from exporter.delivered import DeliveredTraces, delivered_path
from testkit.fake_letta import FakeLetta, LettaStore
from testkit.otlp_receiver import OtlpReceiver

from .conftest import LETTA

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exporter.cli"]
SOCKET_FIXTURES = LETTA / "socket"
RECORDS = [
    line for line in SOCKET_FIXTURES.joinpath("records.ndjson").read_bytes().splitlines() if line
]
API_VIEW: dict[str, Any] = json.loads(SOCKET_FIXTURES.joinpath("api_view.json").read_text())

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path holds about 100 bytes at most."""
    path = Path(tempfile.mkdtemp(prefix="lsx", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _span_id(trace_id: str) -> str:
    return f"{span_id_for(trace_id):016x}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp: Path, receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
    env.update(
        LETTA_EXPORTER_STATE_PATH=str(tmp / "state.json"),
        LETTA_EXPORTER_DEAD_LETTER_PATH=str(tmp / "dead.jsonl"),
        LETTA_EXPORTER_RETRY_BACKOFF_INITIAL_SECONDS="0.01",
        LETTA_EXPORTER_RETRY_BACKOFF_MAX_SECONDS="0.2",
        LETTA_EXPORTER_SOCKET=str(tmp / "t.sock"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", "--health-host", "127.0.0.1", "--health-port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _wait(predicate: Callable[[], bool], timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _metric(port: int, name: str) -> float:
    status, text = _get(port, "/metrics")
    if status != 200:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _send(path: Path, line: bytes) -> None:
    """One record the way Letta's socket backend sends it: connect, one line, close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line + b"\n")


def _replay(path: Path, lines: list[bytes], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda line: _send(path, line), lines))


def _renamed(count: int) -> list[tuple[str, bytes]]:
    """``count`` records shaped like the fixture's, each with a provider trace id of its own."""
    out: list[tuple[str, bytes]] = []
    templates = [json.loads(line) for line in RECORDS]
    for n in range(count):
        record = dict(templates[n % len(templates)])
        record["provider_trace_id"] = f"provider_trace-{n:08x}-0000-4000-8000-000000000000"
        out.append((record["provider_trace_id"], json.dumps(record).encode()))
    return out


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _llm_ids(receiver: OtlpReceiver, wanted: set[str]) -> set[str]:
    return {sid for _, sid in receiver.span_ids() if sid in wanted}


def test_replayed_records_reach_the_collector_once_and_ready_follows_the_listener(short_dir):
    expected = {_span_id(json.loads(line)["provider_trace_id"]) for line in RECORDS}
    with OtlpReceiver() as rx:
        port = _free_port()
        proc = _start(_env(short_dir, rx), port)
        try:
            assert _wait(lambda: _get(port, "/readyz")[0] == 200), proc.stderr
            _replay(short_dir / "t.sock", RECORDS)
            assert _wait(lambda: _llm_ids(rx, expected) == expected)
            assert _wait(
                lambda: _metric(port, "letta_exporter_socket_records_received_total") == 10
            )
            # Observed once the shipper returns (after the batch's GenAI metrics are sent).
            assert _wait(
                lambda: _metric(port, "letta_exporter_socket_delivery_seconds_count") == 10
            )
            assert _wait(lambda: _metric(port, "letta_exporter_journal_depth_records") == 0)
        finally:
            code, err = _stop(proc)
        llm = [s for s in rx.spans() if s.span_id in expected]
    assert code == 0, err
    assert len(llm) == len(expected)  # once each
    # From the record alone: the span says where its duration came from (nowhere).
    assert all(s.attributes.get("letta.duration.source") == "none" for s in llm)
    assert "Traceback" not in err


def test_kill_9_in_a_burst_then_restart_delivers_every_committed_record(short_dir):
    records = _renamed(300)
    expected = {_span_id(trace_id) for trace_id, _ in records}
    with OtlpReceiver() as rx:
        port = _free_port()
        env = _env(short_dir, rx, LETTA_EXPORTER_BATCH_SIZE="20")
        rx.set_delay(0.05)
        proc = _start(env, port)
        assert _wait(lambda: _get(port, "/readyz")[0] == 200)
        _replay(short_dir / "t.sock", [line for _, line in records])
        assert _wait(lambda: len(_llm_ids(rx, expected)) >= 40)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert rx.wait_idle(10)
        before = _llm_ids(rx, expected)
        assert len(before) < len(expected)  # it really was cut short

        rx.set_delay(0)
        proc = _start(env, port)
        try:
            assert _wait(lambda: _llm_ids(rx, expected) == expected, 120)
        finally:
            code, err = _stop(proc)
        ids = [s.span_id for s in rx.spans() if s.span_id in expected]
    assert code == 0, err
    # At least once: only what was in flight at the kill comes twice, with the same ids.
    assert len(ids) - len(expected) <= 40


def test_a_collector_down_for_a_while_gets_everything_after(short_dir):
    records = _renamed(50)
    expected = {_span_id(trace_id) for trace_id, _ in records}
    with OtlpReceiver() as rx:
        port = _free_port()
        rx.fail(None)
        proc = _start(_env(short_dir, rx), port)
        try:
            assert _wait(lambda: _get(port, "/readyz")[0] == 200)
            _replay(short_dir / "t.sock", [line for _, line in records])
            assert _wait(lambda: _metric(port, "letta_exporter_export_failures_total") >= 3)
            # Reception never waits on the collector: every record is journaled meanwhile.
            assert _metric(port, "letta_exporter_socket_records_received_total") == 50
            assert _metric(port, "letta_exporter_journal_depth_records") == 50
            assert _get(port, "/readyz")[0] == 200
            rx.reset_faults()
            assert _wait(lambda: _llm_ids(rx, expected) == expected)
            assert _wait(lambda: _metric(port, "letta_exporter_journal_depth_records") == 0)
        finally:
            code, err = _stop(proc)
    assert code == 0, err


def test_sigterm_with_the_collector_down_leaves_the_records_journaled(short_dir):
    records = _renamed(20)
    expected = {_span_id(trace_id) for trace_id, _ in records}
    with OtlpReceiver() as rx:
        port = _free_port()
        env = _env(short_dir, rx)
        rx.fail(None)
        proc = _start(env, port)
        assert _wait(lambda: _get(port, "/readyz")[0] == 200)
        _replay(short_dir / "t.sock", [line for _, line in records])
        assert _wait(lambda: _metric(port, "letta_exporter_export_failures_total") >= 1)
        code, err = _stop(proc)
        assert code == 1  # honest: records are left undelivered (journaled, not lost)
        assert "stay journaled" in err
        assert not _llm_ids(rx, expected)

        rx.reset_faults()
        proc = _start(env, port)
        try:
            assert _wait(lambda: _llm_ids(rx, expected) == expected)
        finally:
            code, err = _stop(proc)
    assert code == 0, err


def test_socket_and_api_together_deliver_nothing_twice(short_dir):
    # The first record never reaches the socket (the exporter was down): the poll finds it.
    missed = json.loads(RECORDS[0])
    sent = RECORDS[1:]
    socket_ids = {_span_id(json.loads(line)["provider_trace_id"]) for line in sent}
    missed_id = _span_id(missed["provider_trace_id"])
    store = LettaStore()
    missed_step = missed["step_id"]
    for step_id, view in API_VIEW.items():
        if step_id != missed_step:  # steps listed, their traces not written yet
            store.add_step(view["step"], trace=None, metrics=view["metrics"])
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        port = _free_port()
        env = _env(
            short_dir,
            rx,
            LETTA_BASE_URL=letta.url,
            LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.3",
            LETTA_EXPORTER_TRACE_SETTLE_SECONDS="600",
        )
        proc = _start(env, port)
        try:
            assert _wait(lambda: _get(port, "/readyz")[0] == 200)
            _replay(short_dir / "t.sock", sent)
            if not _wait(lambda: _llm_ids(rx, socket_ids) == socket_ids):
                proc.kill()
                pytest.fail(proc.communicate()[1][-5000:])

            # Only now does the API show the traces: the socket delivered and booked them first
            # (a poll that meets a trace before the socket books it may send it too, with the
            # same ids; that race is not what this test is about).
            def booked() -> bool:
                ledger = DeliveredTraces(delivered_path(short_dir / "state.json"))
                return all(ledger.has_trace(json.loads(x)["provider_trace_id"]) for x in sent)

            assert _wait(booked)
            for step_id, view in API_VIEW.items():
                if step_id != missed_step:
                    store.set_trace(step_id, view["trace"])
            view = API_VIEW[missed_step]
            store.add_step(view["step"], trace=view["trace"], metrics=view["metrics"])
            assert _wait(lambda: missed_id in _llm_ids(rx, {missed_id}))
            asked = len(letta.requests)
            assert _wait(lambda: len(letta.requests) > asked + 10)  # more polls went by
        finally:
            code, err = _stop(proc)
        spans = rx.spans()
        duplicates = rx.duplicate_count
    assert code == 0, err
    assert duplicates == 0
    llm = [s for s in spans if s.span_id in socket_ids | {missed_id}]
    assert len(llm) == len(socket_ids) + 1
    # The socket's spans got their context from the API (step tokens, metrics duration).
    with_step = [s for s in llm if s.attributes.get("letta.step.total_tokens") is not None]
    assert with_step
    ledger = DeliveredTraces(delivered_path(short_dir / "state.json"))
    assert all(ledger.has_trace(json.loads(line)["provider_trace_id"]) for line in sent)
    assert not ledger.has_trace(missed["provider_trace_id"])


def test_sigterm_ships_what_the_journal_holds_when_the_collector_takes_it(short_dir):
    records = _renamed(60)
    expected = {_span_id(trace_id) for trace_id, _ in records}
    with OtlpReceiver() as rx:
        port = _free_port()
        rx.set_delay(0.2)  # a slow collector: the journal holds a backlog at the signal
        proc = _start(_env(short_dir, rx, LETTA_EXPORTER_BATCH_SIZE="10"), port)
        assert _wait(lambda: _get(port, "/readyz")[0] == 200)
        _replay(short_dir / "t.sock", [line for _, line in records])
        assert _wait(lambda: _metric(port, "letta_exporter_socket_records_received_total") == 60)
        assert len(_llm_ids(rx, expected)) < len(expected)
        code, err = _stop(proc)
        assert code == 0, err
        assert _llm_ids(rx, expected) == expected
        assert _get(port, "/readyz")[0] == 0  # gone
