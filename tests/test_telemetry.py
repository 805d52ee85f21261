"""Health endpoints and metrics over a real socket; the dead-letter file."""

from __future__ import annotations

import httpx

from exporter.telemetry import DeadLetter, HealthServer, Metrics


def test_health_ready_and_metrics_endpoints():
    metrics = Metrics()
    state = {"alive": True, "ready": False}
    server = HealthServer(
        host="127.0.0.1",
        port=0,
        metrics=metrics,
        alive=lambda: state["alive"],
        ready=lambda: state["ready"],
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            state["ready"] = True
            assert client.get("/readyz").status_code == 200
            state["alive"] = False
            assert client.get("/healthz").status_code == 503
            metrics.traces_exported.inc(3)
            metrics.spans_rejected.inc(2)
            metrics.retries.labels(hop="letta").inc()
            body = client.get("/metrics").text
            assert "letta_exporter_traces_exported_total 3.0" in body
            assert "letta_exporter_spans_rejected_total 2.0" in body
            assert 'letta_exporter_retries_total{hop="letta"} 1.0' in body
            assert "letta_exporter_lag_seconds" in body
            assert "letta_exporter_last_success_timestamp_seconds" in body
            assert client.get("/nope").status_code == 404
    finally:
        server.stop()
    assert metrics.value("letta_exporter_traces_exported_total") == 3


def test_dead_letter_appends_json_lines(tmp_path):
    dl = DeadLetter(tmp_path / "sub" / "dead.jsonl")
    dl.write("no_trace", step_id="step-1")
    dl.write("invalid", step_id="step-2", error="bad field")
    records = list(dl.read())
    assert [r["reason"] for r in records] == ["no_trace", "invalid"]
    assert records[1]["error"] == "bad field"
    assert dl.count == 2


def test_dead_letter_write_failure_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    dl = DeadLetter(blocker / "dead.jsonl")
    dl.write("no_trace", step_id="step-9")
    assert "step-9" in caplog.text
    assert dl.count == 0
