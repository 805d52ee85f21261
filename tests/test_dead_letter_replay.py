"""``letta-otel-exporter replay FILE`` over a real receiver: what was refused is sent again and
removed from the file, what cannot be re-sent stays, and a replay is safe to repeat or kill."""

from __future__ import annotations

import json
import signal
import subprocess

import grpc

from exporter.telemetry import DeadLetter
from testkit import FakeLetta, OtlpReceiver
from tests.conftest import LETTA
from tests.test_cli import CLI, ROOT, _env, _run, _wait
from tests.test_failure_letta import _store


def _refused_export(tmp_path, letta: FakeLetta, rx: OtlpReceiver, *, batch: str = "5") -> dict:
    env = _env(
        tmp_path,
        LETTA_BASE_URL=letta.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        LETTA_EXPORTER_BATCH_SIZE=batch,
        LETTA_EXPORTER_TRACE_SETTLE_SECONDS="1",
    )
    rx.reject_all("bad data (injected)")
    result = _run(["export", "--json"], env)
    assert result.returncode == 1
    rx.reset_faults()
    rx.clear()
    return env


def test_replay_sends_the_refused_batches_once_and_keeps_what_cannot_be_sent(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        env = _refused_export(tmp_path, letta, rx)
        dead = tmp_path / "dead.jsonl"
        before = DeadLetter(dead).read()
        refused = [d for d in before if d["reason"] == "refused"]
        spans = sum(len(d["ids"]) for d in refused)
        first = _run(["replay", str(dead), "--json"], env)
        received = rx.unique_span_count
        requests = rx.request_count
        second = _run(["replay", str(dead), "--json"], env)
        requests_after = rx.request_count
    assert refused
    assert first.returncode == 1, first.stderr  # the no_trace entry stays
    report = json.loads(first.stdout)
    assert report["delivered"] == len(refused)
    assert report["kept"] == 1
    assert report["kept_entries"][0]["reason"] == "no_trace"
    assert received >= spans
    assert [d["reason"] for d in DeadLetter(dead).read()] == ["no_trace"]
    again = json.loads(second.stdout)
    assert again["delivered"] == 0
    assert requests_after == requests  # a second replay sends nothing


def test_replay_refused_by_the_setup_exits_1_and_keeps_everything(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        env = _refused_export(tmp_path, letta, rx)
        dead = tmp_path / "dead.jsonl"
        before = dead.read_text()
        rx.fail(None, grpc_code=grpc.StatusCode.UNAUTHENTICATED, message="bad key")
        result = _run(["replay", str(dead), "--json"], env)
    assert result.returncode == 1
    assert "UNAUTHENTICATED" in json.loads(result.stdout)["error"]
    assert dead.read_text() == before


def test_replay_usage_errors_exit_2(tmp_path):
    env = _env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    missing = _run(["replay", str(tmp_path / "nope.jsonl")], env)
    no_sink = _run(["replay", str(tmp_path / "nope.jsonl")], _env(tmp_path))
    assert missing.returncode == 2
    assert "no dead-letter file" in missing.stderr
    assert no_sink.returncode == 2


def test_a_replay_killed_midway_loses_nothing_and_resends_at_most_the_entry_in_flight(tmp_path):
    store = _store(60)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _refused_export(tmp_path, letta, rx, batch="4")
        dead = tmp_path / "dead.jsonl"
        refused = [d for d in DeadLetter(dead).read() if d["reason"] == "refused"]
        expected = {span for d in refused for span in d["ids"]}
        rx.set_delay(0.2)
        proc = subprocess.Popen(
            [*CLI, "replay", str(dead)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert _wait(lambda: rx.request_count >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        rx.wait_idle(10)
        left = [d for d in DeadLetter(dead).read() if d["reason"] == "refused"]
        assert 0 < len(left) < len(refused)
        rx.set_delay(0)
        result = _run(["replay", str(dead), "--json"], env)
        received = rx.span_count
        unique = rx.unique_span_count
    assert result.returncode == 0, result.stderr
    assert [d for d in DeadLetter(dead).read() if d["reason"] == "refused"] == []
    assert unique == sum(len(d["ids"]) for d in refused) == len(expected)  # nothing lost
    assert received - unique <= 4  # the entry in flight at the kill, at most
