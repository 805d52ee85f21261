"""Configuring the sink: endpoint and TLS choice, bad files, headers, build_exporter, deliver()."""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporter._retry import parse_retry_after
from exporter.errors import ConfigError, SinkError
from exporter.settings import Settings
from exporter.sink import (
    ConsoleExporter,
    DeliveringExporter,
    Delivery,
    OtlpGrpcExporter,
    OtlpHttpExporter,
    OtlpJsonFileExporter,
    deliver,
    resolve_grpc_target,
)
from exporter.wiring import build_exporter
from testkit.otlp_receiver import OtlpReceiver

from ._sink_spans import SECRET, ids, make_batch


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read OTEL_* / LETTA_*: the machine running the tests must not change them."""
    for name in list(os.environ):
        if name.upper().startswith(("OTEL_", "LETTA_")):
            monkeypatch.delenv(name)


# --- gRPC endpoint and TLS selection -------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "insecure", "expected"),
    [
        ("http://collector:4317", None, ("collector:4317", False)),
        ("http://collector:4317", False, ("collector:4317", False)),  # the scheme decides
        ("https://collector:4317", None, ("collector:4317", True)),
        ("https://collector:4317", True, ("collector:4317", True)),  # the scheme decides
        ("collector:4317", None, ("collector:4317", True)),  # INSECURE defaults to false
        ("collector:4317", False, ("collector:4317", True)),
        ("collector:4317", True, ("collector:4317", False)),
        ("https://api.example.com", None, ("api.example.com:443", True)),
        ("http://collector", None, ("collector:80", False)),
        ("HTTPS://user:pw@collector:4317/", None, ("collector:4317", True)),
        ("http://[::1]:4317", None, ("[::1]:4317", False)),
    ],
)
def test_grpc_target_and_tls(endpoint: str, insecure: bool | None, expected: tuple) -> None:
    assert resolve_grpc_target(endpoint, insecure=insecure) == expected


def test_grpc_endpoint_path_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_grpc_target("http://collector:4317/v1/traces") == ("collector:4317", False)
    assert "/v1/traces is ignored" in caplog.text


@pytest.mark.parametrize("endpoint", ["ftp://collector:4317", "http://"])
def test_bad_grpc_endpoint(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        resolve_grpc_target(endpoint)


def test_exporters_know_whether_they_use_tls() -> None:
    exporters: list[DeliveringExporter] = [
        OtlpGrpcExporter(endpoint="collector:4317", insecure=True),
        OtlpGrpcExporter(endpoint="collector:4317"),
        OtlpHttpExporter(endpoint="http://collector:4318/v1/traces"),
        OtlpHttpExporter(endpoint="https://collector:4318/v1/traces"),
    ]
    try:
        assert [e.secure for e in exporters] == [False, True, False, True]  # type: ignore[attr-defined]
        assert exporters[0].target == "http://collector:4317"
        assert exporters[1].target == "https://collector:4317"
    finally:
        for exporter in exporters:
            exporter.shutdown()


# --- TLS files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client pair, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca")
    (out / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf",
        )  # fmt: skip
    names = ("ca", "server", "client")
    return {name: out / f"{name}.pem" for name in names} | {
        f"{name}_key": out / f"{name}.key" for name in names
    }


@pytest.mark.parametrize("exporter_class", [OtlpGrpcExporter, OtlpHttpExporter])
def test_missing_certificate_file_is_a_one_line_config_error(
    exporter_class: type[DeliveringExporter], tmp_path: Path
) -> None:
    missing = tmp_path / "nope" / "ca.pem"

    with pytest.raises(ConfigError) as caught:
        exporter_class(endpoint="https://collector:4317/v1/traces", certificate_file=missing)  # type: ignore[call-arg]

    message = str(caught.value)
    assert message.startswith("otlp_certificate: cannot read ")
    assert str(missing) in message
    assert "\n" not in message


def test_certificate_file_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")

    with pytest.raises(ConfigError, match=r"^otlp_certificate: .*ca\.pem is not a PEM file$"):
        OtlpGrpcExporter(endpoint="https://collector:4317", certificate_file=junk)


def test_client_key_needs_client_certificate(certs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="mutual TLS needs otlp_client_certificate"):
        OtlpHttpExporter(endpoint="https://c/v1/traces", client_key_file=certs["client_key"])


def test_client_key_must_match_its_certificate(certs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="not a matching certificate and key"):
        OtlpGrpcExporter(
            endpoint="https://collector:4317",
            client_key_file=certs["server_key"],
            client_certificate_file=certs["client"],
        )


def test_mutual_tls_files_are_accepted(certs: dict[str, Path]) -> None:
    exporter = OtlpHttpExporter(
        endpoint="https://collector:4318/v1/traces",
        certificate_file=certs["ca"],
        client_key_file=certs["client_key"],
        client_certificate_file=certs["client"],
    )
    exporter.shutdown()


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_end_to_end(certs: dict[str, Path], protocol: str) -> None:
    with OtlpReceiver(tls_certificate_file=certs["server"], tls_key_file=certs["server_key"]) as rx:
        exporter: DeliveringExporter = (
            OtlpGrpcExporter(endpoint=rx.grpc_endpoint, certificate_file=certs["ca"], timeout=5)
            if protocol == "grpc"
            else OtlpHttpExporter(
                endpoint=rx.http_endpoint, certificate_file=certs["ca"], timeout=5
            )
        )
        untrusting: DeliveringExporter = (
            OtlpGrpcExporter(endpoint=rx.grpc_endpoint, timeout=2)
            if protocol == "grpc"
            else OtlpHttpExporter(endpoint=rx.http_endpoint, timeout=2)
        )
        try:
            assert rx.grpc_endpoint.startswith("https://")
            assert exporter.deliver(make_batch(2)) == Delivery(delivered=True)
            assert rx.span_ids() == ids(make_batch(2))
            # A server certificate the system does not trust: refused, not delivered.
            refused = untrusting.deliver(make_batch(1))
            assert (refused.delivered, refused.permanent) == (False, False)
        finally:
            exporter.shutdown()
            untrusting.shutdown()


# --- headers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("exporter_class", [OtlpGrpcExporter, OtlpHttpExporter])
def test_bad_header_name_never_shows_the_value(exporter_class: type[DeliveringExporter]) -> None:
    with pytest.raises(ConfigError) as caught:
        exporter_class(endpoint="http://collector:4318/v1/traces", headers={"bad name": SECRET})  # type: ignore[call-arg]

    assert "'bad name'" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_header_value_with_a_line_break_never_shows_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        OtlpHttpExporter(endpoint="http://c/v1/traces", headers={"x-key": SECRET + "\r\nX: y"})

    assert SECRET not in str(caught.value)


# --- build_exporter --------------------------------------------------------------------------
def test_build_console() -> None:
    assert isinstance(build_exporter(Settings.load(sink="console")), ConsoleExporter)


def test_build_file_is_the_default_without_an_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    output = tmp_path / "spans.jsonl"

    exporter = build_exporter(Settings.load(output=output))

    assert isinstance(exporter, OtlpJsonFileExporter)
    assert exporter.path == str(output)
    assert f"sink: OTLP JSON lines to {output}" in caplog.text
    exporter.shutdown()


def test_build_file_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot open"):
        build_exporter(Settings.load(sink="file", output=tmp_path / "missing-dir" / "x.jsonl"))


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_build_otlp_from_settings_end_to_end(
    protocol: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_base_endpoint
        # As a user would: the standard OTel variables, the headers URL-encoded.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-api-key={SECRET},x-team=a%20b")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")
        exporter = build_exporter(Settings.load())
        try:
            expected = OtlpGrpcExporter if protocol == "grpc" else OtlpHttpExporter
            assert isinstance(exporter, expected)
            assert exporter.deliver(make_batch(3)) == Delivery(delivered=True)
        finally:
            exporter.shutdown()
        (request,) = receiver.requests()
    assert request.headers["x-api-key"] == SECRET
    assert request.headers["x-team"] == "a b"
    if protocol == "http/protobuf":
        assert request.content_encoding == "gzip"
    kind = "gRPC" if protocol == "grpc" else "HTTP/protobuf"
    url = endpoint if protocol == "grpc" else f"{endpoint}/v1/traces"
    assert f"sink: OTLP {kind} to {url} (compression gzip, timeout 3s, 2 header(s))" in caplog.text
    assert SECRET not in caplog.text


def test_build_rejects_a_bad_certificate_path(tmp_path: Path) -> None:
    settings = Settings.load(
        otlp_endpoint="https://collector:4318", otlp_certificate=tmp_path / "ca.pem"
    )
    with pytest.raises(ConfigError, match=r"^otlp_certificate: cannot read"):
        build_exporter(settings)


# --- deliver() with any SpanExporter ----------------------------------------------------------
def test_deliver_to_a_stock_exporter() -> None:
    memory = InMemorySpanExporter()
    spans = make_batch(3)

    assert deliver(memory, spans) == Delivery(delivered=True)
    assert [s.context.span_id for s in memory.get_finished_spans()] == [  # type: ignore[union-attr]
        s.context.span_id  # type: ignore[union-attr]
        for s in spans
    ]
    memory.shutdown()
    result = deliver(memory, spans)  # the SDK's exporter answers FAILURE once shut down
    assert result == Delivery(delivered=False, message="InMemorySpanExporter returned FAILURE")


class Exploding(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("kaboom")


def test_deliver_never_raises() -> None:
    result = deliver(Exploding(), make_batch(1))

    assert result == Delivery(delivered=False, message="Exploding raised RuntimeError: kaboom")


class Flaky(DeliveringExporter):
    """A sink whose outcome the test chooses (and whose clock it drives)."""

    def __init__(self, clock: list[float], **options: object) -> None:
        super().__init__(target="flaky://sink", clock=lambda: clock[0], **options)  # type: ignore[arg-type]
        self.outcome: Delivery | Exception = Delivery(delivered=True)

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_unexpected_exceptions_become_failed_deliveries() -> None:
    sink = Flaky([0.0], secrets=[SECRET])
    sink.outcome = ValueError(f"token {SECRET} rejected")

    result = deliver(sink, make_batch(2))

    assert not result.delivered
    assert not result.permanent
    assert result.message == "flaky://sink: unexpected ValueError: token [redacted] rejected"
    assert sink.stats.failed_requests == 1


def test_identical_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    sink = Flaky(clock, log_interval=60)
    sink.outcome = Delivery(delivered=False, message="flaky://sink: HTTP 503")
    caplog.set_level(logging.INFO, logger="exporter.sink")

    for _ in range(5):
        sink.deliver(make_batch(1))
    clock[0] += 61
    sink.deliver(make_batch(1))
    sink.outcome = Delivery(delivered=False, message="flaky://sink: HTTP 400", permanent=True)
    sink.deliver(make_batch(1))
    sink.outcome = Delivery(delivered=True)
    sink.deliver(make_batch(1))
    sink.deliver(make_batch(1))

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "span export failed (will be retried): flaky://sink: HTTP 503"),
        (
            "WARNING",
            "span export failed (will be retried): flaky://sink: HTTP 503 "
            "(and 4 more times in the last 60s)",
        ),
        ("ERROR", "span export failed permanently: flaky://sink: HTTP 400"),
        ("INFO", "export to flaky://sink succeeded again"),
    ]
    assert sink.stats.failed_requests == 7
    assert sink.stats.exported_spans == 2


def test_stats_count_partial_success() -> None:
    sink = Flaky([0.0])
    sink.outcome = Delivery(delivered=True, rejected=99, message="too many")

    sink.deliver(make_batch(4))  # cannot reject more than it got

    assert (sink.stats.exported_spans, sink.stats.rejected_spans) == (0, 4)


def test_console_exporter_target_names_the_stream() -> None:
    stream = io.StringIO()
    assert ConsoleExporter(stream=stream).target == "stream"
    assert ConsoleExporter().target == "stdout"


# --- Retry-After -------------------------------------------------------------------------------
def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)

    assert parse_retry_after(None) is None
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("inf") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now, usegmt=True), now=now.timestamp() + 9) == 0.0


# --- OTLP/HTTP answers the test receiver never gives (httpx.MockTransport) --------------------
def http_answering(response: httpx.Response) -> OtlpHttpExporter:
    return OtlpHttpExporter(
        endpoint="http://collector:4318/v1/traces",
        transport=httpx.MockTransport(lambda request: response),
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(
                200,
                json={"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}},
            ),
            Delivery(delivered=True, rejected=2, message="too old"),
        ),
        (httpx.Response(200), Delivery(delivered=True)),
        (
            httpx.Response(202, content=b"\xff\xfe not protobuf"),
            Delivery(delivered=True, message="accepted, but the response body is unreadable"),
        ),
        (
            httpx.Response(500, text="collector\nexploded"),
            Delivery(
                delivered=False,
                permanent=True,
                message="http://collector:4318/v1/traces: HTTP 500 Internal Server Error: "
                "collector exploded",
            ),
        ),
        (
            httpx.Response(503, json={"code": 14, "message": "overloaded"}),
            Delivery(
                delivered=False,
                message="http://collector:4318/v1/traces: HTTP 503 Service Unavailable: overloaded",
            ),
        ),
        (
            httpx.Response(301, headers={"Location": "https://elsewhere/v1/traces"}),
            Delivery(
                delivered=False,
                permanent=True,
                message="http://collector:4318/v1/traces: HTTP 301 Moved Permanently",
                failure="configuration",  # a wrong URL: delivery waits, nothing is dropped
            ),
        ),
    ],
)
def test_http_answers(response: httpx.Response, expected: Delivery) -> None:
    exporter = http_answering(response)
    try:
        assert exporter.deliver(make_batch(3)) == expected
    finally:
        exporter.shutdown()


def test_http_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    exporter = OtlpHttpExporter(
        endpoint="http://collector:4318/v1/traces",
        headers={"User-Agent": "mine/1", "x-key": SECRET},
        compression="gzip",
        transport=httpx.MockTransport(handler),
    )
    try:
        assert exporter.deliver(make_batch(2)).delivered
    finally:
        exporter.shutdown()
    (request,) = seen
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["user-agent"] == "mine/1"
    assert request.headers["x-key"] == SECRET
    body = ExportTraceServiceRequest.FromString(gzip.decompress(request.content))
    assert body == encode_spans(make_batch(2))
