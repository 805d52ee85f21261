"""The CLI as users run it: a real process, real sockets, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from exporter.convert import span_id_for
from exporter.sink import otlp_json_to_request
from testkit import FakeLetta, LettaStore, OtlpReceiver
from tests.conftest import CLOUD, LETTA

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exporter.cli"]
EXAMPLE = ROOT / "examples" / "provider-traces.jsonl"
TRACE_FILES = sorted(p for p in (LETTA / "traces").glob("*.json") if "database" not in p.name)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LETTA_", "OTEL_"))  # the developer's own settings stay out
    }
    env.update(
        LETTA_EXPORTER_STATE_PATH=str(tmp_path / "state.json"),
        LETTA_EXPORTER_DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"),
        LETTA_EXPORTER_RETRY_BACKOFF_INITIAL_SECONDS="0.01",
        LETTA_EXPORTER_RETRY_BACKOFF_MAX_SECONDS="0.2",
        PYTHONUNBUFFERED="1",
        LETTA_EXPORTER_HEALTH_PORT="0",  # a free port: never the default another process holds
    )
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=kw.pop("cwd", ROOT),
        **kw,  # type: ignore[arg-type]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _otlp_lines(text: str) -> list:
    return [otlp_json_to_request(line) for line in text.splitlines() if line.strip()]


def _spans(requests: list) -> list:
    return [
        span
        for request in requests
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


# ------------------------------------------------------------------------------- help, usage
@pytest.mark.parametrize("command", ["run", "export", "convert", "check", "replay"])
def test_every_command_has_help_with_examples(tmp_path, command):
    result = _run([command, "--help"], _env(tmp_path))
    assert result.returncode == 0
    assert "Examples:" in result.stdout
    assert "letta-otel-exporter" in result.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    result = _run(["export"], _env(tmp_path, LETTA_EXPORTER_CONTENT="everything"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "ConfigError: content (LETTA_EXPORTER_CONTENT): expected 'none', 'full' or 'raw'"
    ]
    bad_flag = _run(["export", "--concurrency", "0"], _env(tmp_path))
    assert bad_flag.returncode == 2
    assert "concurrency" in bad_flag.stderr
    assert "Traceback" not in bad_flag.stderr


def test_letta_down_is_a_clear_error_without_the_key(tmp_path):
    port = _free_port()
    env = _env(
        tmp_path,
        LETTA_BASE_URL=f"http://127.0.0.1:{port}",
        LETTA_API_KEY="sk-let-very-secret-123",
        LETTA_EXPORTER_MAX_RETRIES="1",
        LETTA_EXPORTER_SINK="console",
    )
    result = _run(["export"], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "sk-let-very-secret-123" not in result.stderr + result.stdout


# ------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.name)
def test_convert_fixture_gives_otlp_json_the_proto_parser_reads(tmp_path, path):
    result = _run(["convert", str(path)], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    trace = json.loads(path.read_bytes())
    spans = _spans(_otlp_lines(result.stdout))
    by_id = {s.span_id.hex(): s for s in spans}
    llm = by_id[f"{span_id_for(trace['id']):016x}"]
    assert llm.end_time_unix_nano > 0
    attributes = {a.key: a.value for a in llm.attributes}
    assert attributes["letta.provider_trace.id"].string_value == trace["id"]
    # The run's parent span comes with it, in the same trace.
    parents = [s for s in spans if s.name.startswith("invoke_agent")]
    assert len(parents) == 1
    assert parents[0].trace_id == llm.trace_id
    assert llm.parent_span_id == parents[0].span_id


def test_convert_cloud_shapes_and_stdin(tmp_path):
    for path in sorted(CLOUD.glob("*.json")):
        result = _run(["convert", "-", "--no-parents"], _env(tmp_path), input=path.read_text())
        assert result.returncode == 0, result.stderr
        (span,) = _spans(_otlp_lines(result.stdout))
        attributes = {a.key: a.value for a in span.attributes}
        trace = json.loads(path.read_bytes())
        assert attributes["letta.latency_ms"].int_value == trace["latency_ms"]
        assert span.end_time_unix_nano - span.start_time_unix_nano == trace["latency_ms"] * 10**6


def test_convert_json_lines_to_a_file(tmp_path):
    out = tmp_path / "spans.jsonl"
    result = _run(["convert", str(EXAMPLE), "-o", str(out)], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "converted 25 traces" in result.stderr
    spans = _spans(_otlp_lines(out.read_text()))
    names = [s.name for s in spans]
    assert sum(not n.startswith("invoke_agent") for n in names) == 25
    assert len({s.span_id for s in spans}) == len(spans)


def test_convert_reports_a_bad_record_and_converts_the_rest(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = EXAMPLE.read_text().splitlines()
    bad.write_text("\n".join([lines[0], '{"request_json": 5}', "{not json", lines[1]]) + "\n")
    result = _run(["convert", str(bad), "--no-parents"], _env(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "line 2" in result.stderr
    assert "request_json" in result.stderr
    assert "line 3" in result.stderr
    assert "2 invalid records skipped" in result.stderr
    assert len(_spans(_otlp_lines(result.stdout))) == 2


def test_export_from_a_damaged_file_dead_letters_the_bad_record(tmp_path):
    bad = tmp_path / "bad.json"
    # Plain ProviderTraces (the sample's records carry the step beside each trace).
    items = [json.loads(line)["trace"] for line in EXAMPLE.read_text().splitlines()[:3]]
    items[1]["latency_ms"] = "slow"
    bad.write_text(json.dumps(items))
    result = _run(
        ["export", "--source", "file", "--input", str(bad), "--json", "--sink", "console"],
        _env(tmp_path),
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert summary["exported"] == 2
    assert summary["invalid"] == 1
    assert "item 2" in summary["failures"][0]
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert dead["reason"] == "invalid"
    assert dead["record_id"] == items[1]["id"]


# ------------------------------------------------------------------------------- export
def test_readme_first_command_exports_the_sample_to_the_otlp_file(tmp_path):
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE)], _env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "exported 25 LLM-call spans" in result.stdout
    spans = _spans(_otlp_lines((tmp_path / "letta-traces.otlp.jsonl").read_text()))
    assert sum(not s.name.startswith("invoke_agent") for s in spans) == 25


def test_export_json_summary_and_exit_0_over_http(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint,
            OTEL_EXPORTER_OTLP_HEADERS="x-api-key=collector-secret-999",
            LETTA_EXPORTER_TRACE_SETTLE_SECONDS="1",
        )
        result = _run(["export", "--json"], env)
        received = rx.unique_span_count
        headers = rx.requests()[0].headers
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["exported"] == 22
    assert summary["missing_traces"] == 1
    assert summary["ok"] is True
    assert received == 22 + summary["run_spans"]
    assert headers.get("x-api-key") == "collector-secret-999"
    assert "collector-secret-999" not in result.stderr + result.stdout


def test_export_exits_1_naming_what_the_collector_rejected(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.partial_success(3, "span too large", count=1)
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        )
        result = _run(["export"], env)
    assert result.returncode == 1
    assert "rejected by the collector 3" in result.stdout
    assert "span too large" in result.stdout


def test_export_gives_up_at_the_deadline_naming_the_traces(tmp_path):
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta:
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_free_port()}",
        )
        result = _run(["export", "--export-deadline", "1", "--json"], env)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["undelivered"] > 0
    assert "provider_trace-" in summary["error"]
    state = tmp_path / "state.json"  # nothing delivered: no cursor was ever saved
    assert not state.exists() or all(
        s["cursor"] is None for s in json.loads(state.read_text())["streams"].values()
    )


def _backlog(count: int) -> tuple[LettaStore, list[str]]:
    store = LettaStore()
    # Steps an hour old: a one-shot export stops at its start time.
    store.generate(
        count, agents=3, steps_per_run=4, seed=7, start=datetime.now(UTC) - timedelta(hours=1)
    )
    return store, store.step_ids()


def _trace_span_ids(letta: FakeLetta, step_ids: list[str]) -> list[str]:
    with httpx.Client(base_url=letta.url) as client:
        return [
            f"{span_id_for(client.get(f'/v1/steps/{s}/trace').json()['id']):016x}" for s in step_ids
        ]


def _start_export(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "export", "--json", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(predicate, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_kill_9_in_the_middle_of_a_backlog_then_restart_loses_nothing(tmp_path):
    store, step_ids = _backlog(300)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        expected = set(_trace_span_ids(letta, step_ids))
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_BATCH_SIZE="20",
        )
        rx.set_delay(0.05)
        proc = _start_export(env)
        assert _wait(lambda: rx.unique_span_count >= 60)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert rx.wait_idle(10)  # a batch the receiver was still "working" on lands first
        delivered_before = {sid for _, sid in rx.span_ids()}
        assert len(delivered_before & expected) < len(expected)  # it really was cut short
        cursor = json.loads((tmp_path / "state.json").read_text())["streams"]
        assert any(s["cursor"] for s in cursor.values())

        rx.set_delay(0)
        proc = _start_export(env)
        out, err = proc.communicate(timeout=120)
        received = {sid for _, sid in rx.span_ids()}
        duplicates = rx.duplicate_count
    assert proc.returncode == 0, err
    assert expected <= received
    # At-least-once: at most the batch in flight at the kill is sent again.
    assert duplicates <= 20
    assert json.loads(out)["exported"] == len(expected - delivered_before) + duplicates


def test_sigterm_during_export_exits_0_with_the_checkpoint_at_the_last_delivered(tmp_path):
    store, step_ids = _backlog(200)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        span_ids = _trace_span_ids(letta, step_ids)
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint,
            LETTA_EXPORTER_BATCH_SIZE="10",
        )
        rx.set_delay(0.05)
        proc = _start_export(env)
        assert _wait(lambda: rx.unique_span_count >= 30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        received = {sid for _, sid in rx.span_ids()}
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    (stream,) = json.loads((tmp_path / "state.json").read_text())["streams"].values()
    position = step_ids.index(stream["cursor"])
    assert position < len(step_ids) - 1
    # Everything up to the cursor is at the collector, and nothing after it was counted.
    assert set(span_ids[: position + 1]) <= received
    assert not set(span_ids[position + 1 :]) & received


# ------------------------------------------------------------------------------- sidecar
def test_sidecar_serves_health_and_metrics_and_stops_cleanly_on_sigterm(tmp_path):
    port = _free_port()
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_HEALTH_HOST="127.0.0.1",
            LETTA_EXPORTER_HEALTH_PORT=str(port),
            LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.2",
            LETTA_EXPORTER_LOG_FORMAT="json",
        )
        proc = subprocess.Popen(
            [*CLI, "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                try:
                    return httpx.get(f"{base}/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            assert _wait(ready), proc.stderr.read() if proc.poll() is not None else "not ready"
            assert httpx.get(f"{base}/healthz").status_code == 200
            assert rx.wait_for(22)
            assert _wait(
                lambda: (
                    "letta_exporter_traces_exported_total 22.0" in httpx.get(f"{base}/metrics").text
                )
            )
            metrics = httpx.get(f"{base}/metrics").text
            assert "letta_exporter_last_success_timestamp_seconds" in metrics
            assert "letta_exporter_lag_seconds" in metrics
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("SIGTERM" in entry["message"] for entry in logs)
    assert any(entry["message"].startswith("stopped") for entry in logs)


def test_check_reports_what_it_reached(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        env = _env(
            tmp_path, LETTA_BASE_URL=letta.url, OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint
        )
        good = _run(["check"], env)
        rx.stop()
        bad = _run(["check", "--otlp-timeout-ms", "500"], env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok    letta" in good.stdout
    assert "ok    sink" in good.stdout
    assert bad.returncode == 1
    assert "FAIL  sink" in bad.stdout


def test_export_with_two_workers_splits_the_work_and_adds_up(tmp_path):
    store, step_ids = _backlog(120)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        expected = set(_trace_span_ids(letta, step_ids))
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        )
        result = _run(["export", "--workers", "2", "--json"], env)
        received = rx.spans()
        again = _run(["export", "--workers", "2", "--json"], env)  # resumes: nothing new
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2
    assert summary["exported"] == 120
    assert summary["run_spans"] == 30
    assert summary["skipped_other_shards"] == 120  # each worker saw the other's half
    llm = {s.span_id for s in received if not s.name.startswith("invoke_agent")}
    assert llm == expected
    assert rx.duplicate_count == 0
    assert len([s for s in received if s.name.startswith("invoke_agent")]) == 30
    assert json.loads(again.stdout)["exported"] == 0
    streams = json.loads((tmp_path / "state.json").read_text())["streams"]
    assert len(streams) == 2  # one checkpoint stream per worker, in one file


def test_workers_need_an_otlp_sink(tmp_path):
    result = _run(["export", "--workers", "2", "--sink", "file"], _env(tmp_path))
    assert result.returncode == 2
    assert "--workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_reaches_every_worker_and_the_export_resumes(tmp_path):
    store, step_ids = _backlog(300)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        expected = set(_trace_span_ids(letta, step_ids))
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_BATCH_SIZE="10",
        )
        rx.set_delay(0.05)
        proc = _start_export(env, "--workers", "2")
        assert _wait(lambda: rx.unique_span_count >= 40)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        first = json.loads(out)
        assert first["interrupted"] is True
        assert first["exported"] < 300
        rx.set_delay(0)
        again = _start_export(env, "--workers", "2")
        out, err = again.communicate(timeout=120)
        received = {sid for _, sid in rx.span_ids()}
    assert again.returncode == 0, err
    assert expected <= received
