"""The collector hop's failure policy over real sockets: a configuration failure stops and waits
(nothing dead-lettered, the checkpoint still), an oversized batch is split, data refusals alone
are dead-lettered."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from exporter.errors import DeliveryBlockedError
from exporter.shipping import ExportSummary, Shipper
from exporter.sink import OtlpGrpcExporter, OtlpHttpExporter
from exporter.telemetry import DeadLetter, Metrics
from testkit import FakeLetta, OtlpReceiver
from tests.conftest import LETTA
from tests.test_cli import CLI, ROOT, _env, _free_port, _run, _wait

from ._sink_spans import make_batch, make_span

KEY = "collector-key-4711"


def _cursors(tmp_path: Path) -> list[object]:
    state = tmp_path / "state.json"
    if not state.exists():
        return []
    return [s["cursor"] for s in json.loads(state.read_text())["streams"].values() if s["cursor"]]


def _dead(tmp_path: Path) -> list[dict[str, object]]:
    return DeadLetter(tmp_path / "dead.jsonl").read()  # type: ignore[return-value]


# --------------------------------------------------------------------------- one-shot export
@pytest.mark.parametrize(
    ("protocol", "fault", "named"),
    [
        ("grpc", "unauthenticated", "UNAUTHENTICATED"),
        ("http", "unauthenticated", "HTTP 401"),
        ("http", "wrong_path", "HTTP 404"),
        ("grpc", "permission_denied", "PERMISSION_DENIED"),
    ],
)
def test_export_stops_naming_a_configuration_failure_and_a_rerun_delivers_all(
    tmp_path, protocol, fault, named
):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_base_endpoint
        extra = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if protocol == "grpc" else "http/protobuf"}
        if fault == "unauthenticated":
            rx.require_header("x-api-key", KEY)
        elif fault == "permission_denied":
            rx.fail(None, grpc_code=grpc.StatusCode.PERMISSION_DENIED, message="no write access")
        bad = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            LETTA_EXPORTER_TRACE_SETTLE_SECONDS="1",
            **extra,
        )
        if fault == "wrong_path":
            bad["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = rx.http_base_endpoint + "/v1/trace"
        # The whole deadline would be 120 s: a configuration failure must not wait for it.
        first = _run(["export", "--json", "--export-deadline", "120"], bad)
        before = rx.unique_span_count
        dead_after_first = _dead(tmp_path)
        cursors_after_first = _cursors(tmp_path)

        rx.reset_faults()
        good = dict(bad, OTEL_EXPORTER_OTLP_HEADERS=f"x-api-key={KEY}")
        good.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        second = _run(["export", "--json"], good)
        received = rx.unique_span_count

    assert first.returncode == 1, first.stderr
    summary = json.loads(first.stdout)
    assert named in summary["error"]
    assert "configuration" in summary["error"]
    assert KEY not in first.stdout + first.stderr
    assert before == 0
    assert dead_after_first == []  # nothing dead-lettered
    assert cursors_after_first == []  # the checkpoint did not move
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["exported"] == 22
    assert received == 22 + again["run_spans"]
    assert [d["reason"] for d in _dead(tmp_path)] == ["no_trace"]  # the fixture's traceless step


def test_a_data_refusal_is_still_dead_lettered(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.fail(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span")
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_BATCH_SIZE="5",
            LETTA_EXPORTER_TRACE_SETTLE_SECONDS="1",
        )
        result = _run(["export", "--json"], env)
    assert result.returncode == 1
    dead = _dead(tmp_path)
    assert [d["reason"] for d in dead if d["reason"] != "no_trace"] == ["refused"]
    assert json.loads(result.stdout)["undelivered"] == 5


# --------------------------------------------------------------------------- sidecar
def test_sidecar_is_not_ready_while_the_credential_is_refused_then_delivers_everything(
    tmp_path,
):
    port = _free_port()
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        rx.require_header("x-api-key", KEY)
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_HEADERS=f"x-api-key={KEY}-old",
            LETTA_EXPORTER_HEALTH_HOST="127.0.0.1",
            LETTA_EXPORTER_HEALTH_PORT=str(port),
            LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.2",
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

            def readyz() -> httpx.Response | None:
                try:
                    return httpx.get(f"{base}/readyz")
                except httpx.HTTPError:
                    return None

            def refusing() -> bool:
                answer = readyz()
                return answer is not None and "UNAUTHENTICATED" in answer.text

            assert _wait(refusing), "no not-ready answer naming the refusal"
            answer = readyz()
            assert answer is not None
            assert answer.status_code == 503
            assert rx.wait_for_requests(3)  # it keeps trying
            assert rx.unique_span_count == 0
            rx.require_header("x-api-key", f"{KEY}-old")  # the collector takes the key now
            assert rx.wait_for(22, timeout=60)
            assert _wait(lambda: (r := readyz()) is not None and r.status_code == 200)
            proc.send_signal(2)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert all(d["reason"] == "no_trace" for d in _dead(tmp_path))
    # Said once, not on every try.
    assert err.count("refuses this exporter's configuration") == 1
    assert KEY not in err


# --------------------------------------------------------------------------- oversized batches
def _shipper(exporter: object, tmp_path: Path, **options: object) -> Shipper:
    return Shipper(
        exporter=exporter,  # type: ignore[arg-type]
        metrics=Metrics(),
        dead_letter=DeadLetter(tmp_path / "dead.jsonl"),
        stop=asyncio.Event(),
        deadline_seconds=30,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_batch_over_the_collector_limit_is_split_and_one_huge_span_dead_lettered(
    tmp_path, protocol
):
    spans = make_batch(40)
    base = make_span(99)
    huge = ReadableSpan(
        name=base.name,
        context=base.context,
        resource=base.resource,
        attributes={"blob": "x" * 60_000},
        start_time=base.start_time,
        end_time=base.end_time,
        instrumentation_scope=base.instrumentation_scope,
    )
    spans.insert(17, huge)
    with OtlpReceiver(max_message_bytes=20_000) as rx:
        exporter = (
            OtlpGrpcExporter(endpoint=rx.grpc_endpoint, timeout=5)
            if protocol == "grpc"
            else OtlpHttpExporter(endpoint=rx.http_endpoint, timeout=5)
        )
        shipper = _shipper(exporter, tmp_path, max_bytes=None)  # only the collector's limit
        summary = ExportSummary()
        try:
            ok = asyncio.run(shipper.ship(spans, [f"t{i}" for i in range(41)], summary))
        finally:
            exporter.shutdown()
        received = rx.span_ids()
    assert ok is False  # one span could not be delivered
    assert len(received) == 40
    assert summary.exported == 40
    (dead,) = _dead(tmp_path)
    assert dead["reason"] == "too_large"
    assert dead["ids"] == ["t17"]
    assert int(dead["size_bytes"]) > 60_000  # type: ignore[call-overload]
    assert summary.undelivered == 1


def test_batches_are_kept_under_max_bytes_before_sending(tmp_path):
    # The size check before sending is the encoding itself, and the bytes it made are sent:
    # no second pass over the spans' attributes.
    spans = make_batch(64)
    with OtlpReceiver(max_message_bytes=8_000) as rx:
        exporter = OtlpGrpcExporter(endpoint=rx.grpc_endpoint, timeout=5)
        encode = exporter._encoder.encode
        calls: list[int] = []

        def counting(batch):  # type: ignore[no-untyped-def]
            calls.append(len(batch))
            return encode(batch)

        exporter._encoder.encode = counting  # type: ignore[method-assign]
        shipper = _shipper(exporter, tmp_path, max_bytes=6_000)
        summary = ExportSummary()
        try:
            ok = asyncio.run(shipper.ship(spans, [f"t{i}" for i in range(64)], summary))
        finally:
            exporter.shutdown()
        requests = rx.request_count
        received = len(rx.span_ids())
    assert ok
    assert received == 64
    assert requests > 1
    assert exporter.stats.failed_requests == 0  # never refused: split before sending
    assert _dead(tmp_path) == []
    # A binary cut: every part sent (a leaf) and every part cut in halves (an inner node) was
    # encoded exactly once; encoding again to send would add one call per request.
    assert len(calls) == 2 * requests - 1


def test_one_shot_gives_up_after_a_few_configuration_refusals(tmp_path):
    with OtlpReceiver() as rx:
        rx.fail(None, grpc_code=grpc.StatusCode.UNIMPLEMENTED, message="no trace service")
        exporter = OtlpGrpcExporter(endpoint=rx.grpc_endpoint, timeout=5)
        shipper = _shipper(exporter, tmp_path, config_attempts=3)
        try:
            with pytest.raises(DeliveryBlockedError, match="UNIMPLEMENTED"):
                asyncio.run(shipper.ship(make_batch(2), ["a", "b"], ExportSummary()))
        finally:
            exporter.shutdown()
        assert rx.request_count == 3
    assert _dead(tmp_path) == []
