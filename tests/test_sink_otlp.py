"""OTLP/gRPC and OTLP/HTTP end to end, over real sockets, against the test receiver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.sink import DeliveringExporter, Delivery, OtlpGrpcExporter, OtlpHttpExporter
from testkit.otlp_receiver import OtlpReceiver

from ._sink_spans import BASE_NS, SECRET, ids, make_batch, make_span, span_id, trace_id

pytestmark = pytest.mark.e2e

#: Fast reconnects, so "collector back up" is seen within a few tries.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)

Factory = Callable[..., DeliveringExporter]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def make_grpc(receiver: OtlpReceiver) -> Iterator[Callable[..., OtlpGrpcExporter]]:
    built: list[OtlpGrpcExporter] = []

    def make(**options: object) -> OtlpGrpcExporter:
        options.setdefault("timeout", 5.0)
        options.setdefault("channel_options", FAST_RECONNECT)
        built.append(OtlpGrpcExporter(endpoint=receiver.grpc_endpoint, **options))  # type: ignore[arg-type]
        return built[-1]

    yield make
    for exporter in built:
        exporter.shutdown()


@pytest.fixture
def make_http(receiver: OtlpReceiver) -> Iterator[Callable[..., OtlpHttpExporter]]:
    built: list[OtlpHttpExporter] = []

    def make(*, endpoint: str | None = None, **options: object) -> OtlpHttpExporter:
        options.setdefault("timeout", 5.0)
        built.append(OtlpHttpExporter(endpoint=endpoint or receiver.http_endpoint, **options))  # type: ignore[arg-type]
        return built[-1]

    yield make
    for exporter in built:
        exporter.shutdown()


@pytest.fixture(params=["grpc", "http"])
def make_exporter(
    request: pytest.FixtureRequest,
    make_grpc: Callable[..., OtlpGrpcExporter],
    make_http: Callable[..., OtlpHttpExporter],
) -> Factory:
    return make_grpc if request.param == "grpc" else make_http


def deliver_until_delivered(exporter: DeliveringExporter, spans: list, tries: int = 60) -> Delivery:
    """What the worker does: re-send a retryable failure (bounded here)."""
    pause = threading.Event()
    result = exporter.deliver(spans)
    for _ in range(tries):
        if result.delivered or result.permanent:
            break
        pause.wait(0.05)
        result = exporter.deliver(spans)
    return result


# --- what arrives ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_span_arrives_intact(
    make_exporter: Factory, receiver: OtlpReceiver, compression: str
) -> None:
    spans = [*make_batch(6), make_span(50, error=True)]
    exporter = make_exporter(compression=compression)

    result = exporter.deliver(spans)

    assert result == Delivery(delivered=True)
    assert receiver.wait_for(len(spans), timeout=5)
    assert receiver.span_ids() == ids(spans)
    assert receiver.duplicate_count == 0
    got = {r.span_id: r for r in receiver.spans()}
    root = got[f"{span_id(0):016x}"]
    assert root.trace_id == f"{trace_id(0):032x}"
    assert root.name == "chat gpt-4o-mini"
    assert root.span.start_time_unix_nano == BASE_NS
    assert root.span.end_time_unix_nano == BASE_NS + 1_234_567_890
    assert root.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert root.span.parent_span_id == b""
    assert root.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.stream": False,
        "gen_ai.response.finish_reasons": ["stop", "tool_calls"],
        "letta.step.token_ids": [1, 2, 3],
        "letta.step.scores": [0.5, 1.5],
        "letta.step.flags": [True, False],
        "letta.step.index": 0,
    }
    assert root.resource_attributes == {
        "service.name": "letta",
        "service.version": "0.16.8",
        "deployment.environment.name": "test",
    }
    assert root.scope.name == "letta-otel-exporter"
    assert root.scope.version == "0.1.0"
    assert root.span.status.code == trace_pb2.Status.STATUS_CODE_OK
    (event,) = root.span.events
    assert (event.name, event.time_unix_nano) == ("gen_ai.choice", BASE_NS + 500_000_000)
    (link,) = root.span.links
    assert (link.trace_id.hex(), link.span_id.hex()) == (
        f"{trace_id(999):032x}",
        f"{span_id(999):016x}",
    )
    child = got[f"{span_id(3):016x}"]
    assert child.trace_id == f"{trace_id(0):032x}"
    assert child.span.parent_span_id.hex() == f"{span_id(0):016x}"
    assert child.span.start_time_unix_nano == BASE_NS + 3_000_000_000
    failed = got[f"{span_id(50):016x}"]
    assert failed.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert failed.span.status.message == "rate limited"
    assert exporter.stats.exported_spans == len(spans)


def test_gzip_is_what_goes_over_http(receiver: OtlpReceiver, make_http: Factory) -> None:
    for compression in ("none", "gzip"):
        assert make_http(compression=compression).deliver(make_batch(2)).delivered
    plain, zipped = receiver.requests()
    assert (plain.content_encoding, zipped.content_encoding) == (None, "gzip")
    assert plain.content_type == zipped.content_type == "application/x-protobuf"


def test_gzip_is_set_on_the_grpc_channel(make_grpc: Callable[..., OtlpGrpcExporter]) -> None:
    # gRPC decompresses before the handler: the receiver cannot see it, so check the channel.
    assert make_grpc(compression="gzip").compression is grpc.Compression.Gzip
    assert make_grpc().compression is grpc.Compression.NoCompression


def test_headers_arrive(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    exporter = make_exporter(headers={"X-Api-Key": SECRET, "x-tenant": "acme"})

    assert exporter.deliver(make_batch(1)).delivered

    (request,) = receiver.requests()
    assert request.headers["x-api-key"] == SECRET  # lowercase metadata for gRPC
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["user-agent"].startswith("letta-otel-exporter/")


def test_empty_batch_is_a_connectivity_probe(
    make_exporter: Factory, receiver: OtlpReceiver
) -> None:
    exporter = make_exporter()

    assert exporter.deliver([]) == Delivery(delivered=True)
    (request,) = receiver.requests()
    assert (request.span_count, request.outcome) == (0, "ok")
    receiver.stop()
    assert not exporter.deliver([]).delivered
    assert exporter.stats.exported_spans == 0


# --- partial success -----------------------------------------------------------------------------
def test_partial_success_is_counted(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    exporter = make_exporter()
    receiver.partial_success(2, "2 spans had no name")

    result = exporter.deliver(make_batch(5))

    assert result == Delivery(delivered=True, rejected=2, message="2 spans had no name")
    assert exporter.stats.exported_spans == 3
    assert exporter.stats.rejected_spans == 2
    assert exporter.stats.failed_requests == 0
    assert receiver.span_count == 3


def test_partial_success_with_only_a_message(
    make_exporter: Factory, receiver: OtlpReceiver
) -> None:
    receiver.partial_success(0, "attribute limit applied")

    result = make_exporter().deliver(make_batch(2))

    assert result == Delivery(delivered=True, rejected=0, message="attribute limit applied")


# --- failures ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (grpc.StatusCode.UNAVAILABLE, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, False),
        (grpc.StatusCode.ABORTED, False),
        (grpc.StatusCode.CANCELLED, False),
        (grpc.StatusCode.OUT_OF_RANGE, False),
        (grpc.StatusCode.DATA_LOSS, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),  # retryable only with RetryInfo
        (grpc.StatusCode.INVALID_ARGUMENT, True),
        (grpc.StatusCode.UNAUTHENTICATED, True),
        (grpc.StatusCode.PERMISSION_DENIED, True),
        (grpc.StatusCode.NOT_FOUND, True),
        (grpc.StatusCode.UNIMPLEMENTED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNKNOWN, True),
    ],
)
def test_grpc_status_classification(
    receiver: OtlpReceiver, make_grpc: Factory, code: grpc.StatusCode, permanent: bool
) -> None:
    exporter = make_grpc()
    receiver.fail(1, grpc_code=code, message="refused for the test")

    result = exporter.deliver(make_batch(2))

    assert not result.delivered
    assert result.permanent is permanent
    assert result.retry_after is None
    assert result.message.startswith(f"{exporter.target}: gRPC {code.name}: refused for the test")
    assert exporter.stats.failed_requests == 1
    assert exporter.stats.exported_spans == 0
    assert receiver.span_count == 0


def test_grpc_resource_exhausted_with_retry_info_is_retryable(
    receiver: OtlpReceiver, make_grpc: Factory
) -> None:
    exporter = make_grpc()
    receiver.fail(1, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=2.5)

    result = exporter.deliver(make_batch(1))

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, 2.5)


def test_grpc_unavailable_with_retry_info(receiver: OtlpReceiver, make_grpc: Factory) -> None:
    receiver.fail_next(1, retry_after=0.25)
    exporter = make_grpc()

    first = exporter.deliver(make_batch(1))
    second = exporter.deliver(make_batch(1))

    assert (first.delivered, first.permanent, first.retry_after) == (False, False, 0.25)
    assert second == Delivery(delivered=True)


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (429, False),
        (502, False),
        (503, False),
        (504, False),
        (400, True),
        (401, True),
        (403, True),
        (404, True),
        (413, True),
        (500, True),
        (501, True),
    ],
)
def test_http_status_classification(
    receiver: OtlpReceiver, make_http: Factory, status: int, permanent: bool
) -> None:
    exporter = make_http()
    receiver.fail(1, http_status=status, message="refused for the test")

    result = exporter.deliver(make_batch(2))

    assert not result.delivered
    assert result.permanent is permanent
    assert result.message.startswith(f"{receiver.http_endpoint}: HTTP {status} ")
    assert result.message.endswith(": refused for the test")  # the google.rpc.Status message
    assert exporter.stats.failed_requests == 1


def test_http_retry_after(receiver: OtlpReceiver, make_http: Factory) -> None:
    receiver.fail(1, http_status=429, retry_after=7)

    result = make_http().deliver(make_batch(1))

    assert (result.delivered, result.permanent, result.retry_after) == (False, False, 7.0)


def test_http_unknown_path_is_permanent(receiver: OtlpReceiver, make_http: Factory) -> None:
    exporter = make_http(endpoint=receiver.http_base_endpoint + "/v1/wrong")

    result = exporter.deliver(make_batch(1))

    assert (result.delivered, result.permanent) == (False, True)
    assert "HTTP 404" in result.message


def test_permanent_refusal_until_reset(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    exporter = make_exporter()
    receiver.reject_all()

    results = [exporter.deliver(make_batch(1)) for _ in range(3)]
    receiver.reset_faults()
    after = exporter.deliver(make_batch(1))

    assert all(not r.delivered and r.permanent for r in results)
    assert after.delivered
    assert exporter.stats.failed_requests == 3


# --- collector down, slow, back up -------------------------------------------------------------
@pytest.mark.timeout(15)
def test_collector_down_then_up(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    exporter = make_exporter(timeout=2.0)
    assert exporter.deliver(make_batch(1)).delivered  # a live connection, then it goes away
    receiver.stop()

    down = exporter.deliver(make_batch(3, first=10))

    assert (down.delivered, down.permanent) == (False, False)
    assert exporter.target in down.message
    receiver.start()
    up = deliver_until_delivered(exporter, make_batch(3, first=10))
    assert up == Delivery(delivered=True)
    assert ids(make_batch(3, first=10)) <= receiver.span_ids()


@pytest.mark.timeout(15)
def test_http_reuses_the_pool_after_a_restart(receiver: OtlpReceiver, make_http: Factory) -> None:
    exporter = make_http()
    assert exporter.deliver(make_batch(1)).delivered
    receiver.stop()
    receiver.start()

    # The pooled keep-alive connection died with the server: a fresh one is used at once.
    assert exporter.deliver(make_batch(1, first=5)).delivered


@pytest.mark.timeout(10)  # the receiver would answer after 60 s: the export timeout must fire
def test_slow_collector_times_out(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    receiver.set_delay(60)
    exporter = make_exporter(timeout=0.3)

    result = exporter.deliver(make_batch(1))

    assert (result.delivered, result.permanent) == (False, False)
    assert "0.3s" in result.message  # names the timeout that fired
    receiver.stop()  # releases the handler still "working"


@pytest.mark.timeout(10)
def test_nothing_listening(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    receiver.stop()

    result = make_exporter(timeout=2.0).deliver(make_batch(1))

    assert (result.delivered, result.permanent) == (False, False)


def test_export_folds_delivery(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    exporter = make_exporter()
    assert exporter.export(make_batch(1)) is SpanExportResult.SUCCESS
    receiver.reject_all()
    assert exporter.export(make_batch(1)) is SpanExportResult.FAILURE


def test_after_shutdown_nothing_is_sent(make_exporter: Factory, receiver: OtlpReceiver) -> None:
    exporter = make_exporter()
    exporter.shutdown()
    exporter.shutdown()  # idempotent

    result = exporter.deliver(make_batch(1))

    assert (result.delivered, result.permanent) == (False, False)
    assert "shut down" in result.message
    assert receiver.request_count == 0
    assert exporter.force_flush() is True


# --- secrets -----------------------------------------------------------------------------------
def test_header_values_never_leak(
    make_exporter: Factory, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(headers={"authorization": f"Bearer {SECRET}"}, log_interval=0)
    receiver.require_header("authorization", "Bearer the-right-one")
    # A server that quotes back what it received must not make us repeat it either.
    refused = exporter.deliver(make_batch(1))
    receiver.require_header(None)
    receiver.fail(
        1,
        grpc_code=grpc.StatusCode.PERMISSION_DENIED,
        http_status=403,
        message=f"key Bearer {SECRET} is revoked",
    )
    quoted = exporter.deliver(make_batch(1))
    receiver.partial_success(1, f"spans from Bearer {SECRET} were dropped")
    partial = exporter.deliver(make_batch(2))
    receiver.stop()
    down = exporter.deliver(make_batch(1))
    messages = [refused.message, quoted.message, partial.message, down.message]

    assert (refused.delivered, refused.permanent) == (False, True)
    assert "UNAUTHENTICATED" in refused.message or "HTTP 401" in refused.message
    assert "[redacted]" in quoted.message
    assert "[redacted]" in partial.message
    for text in messages + [r.getMessage() for r in caplog.records] + [repr(exporter)]:
        assert SECRET not in text
    assert SECRET not in caplog.text
