"""The OTLP test receiver itself: ports, counting, faults, protocol edge cases."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from exporter.sink import OtlpGrpcExporter, OtlpHttpExporter
from testkit.otlp_receiver import OtlpReceiver

from ._sink_spans import SECRET, ids, make_batch

pytestmark = pytest.mark.e2e

PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def http(receiver: OtlpReceiver) -> Iterator[OtlpHttpExporter]:
    exporter = OtlpHttpExporter(endpoint=receiver.http_endpoint, timeout=5)
    yield exporter
    exporter.shutdown()


@pytest.fixture
def grpc_exp(receiver: OtlpReceiver) -> Iterator[OtlpGrpcExporter]:
    exporter = OtlpGrpcExporter(endpoint=receiver.grpc_endpoint, timeout=5)
    yield exporter
    exporter.shutdown()


def test_endpoints() -> None:
    receiver = OtlpReceiver()
    with receiver:
        assert receiver.running
        assert receiver.grpc_endpoint == f"http://127.0.0.1:{receiver.grpc_port}"
        assert receiver.http_endpoint == f"http://127.0.0.1:{receiver.http_port}/v1/traces"
        assert receiver.grpc_port != receiver.http_port
    assert not receiver.running


def test_restart_keeps_the_ports_and_the_data(
    receiver: OtlpReceiver, http: OtlpHttpExporter
) -> None:
    ports = (receiver.grpc_port, receiver.http_port)
    assert http.deliver(make_batch(2)).delivered

    receiver.stop()
    receiver.stop()  # idempotent
    receiver.start()
    receiver.start()  # idempotent

    assert (receiver.grpc_port, receiver.http_port) == ports
    assert receiver.span_count == 2
    assert http.deliver(make_batch(1, first=7)).delivered
    assert receiver.span_count == 3


def test_count_only_counts_ids_and_duplicates(grpc_exp: OtlpGrpcExporter) -> None:
    with OtlpReceiver(count_only=True, enable_http=False) as receiver:
        exporter = OtlpGrpcExporter(endpoint=receiver.grpc_endpoint, timeout=5)
        try:
            exporter.deliver(make_batch(4))
            exporter.deliver(make_batch(4))  # a re-send: all duplicates
            exporter.deliver(make_batch(2, first=10))
        finally:
            exporter.shutdown()
        assert receiver.wait_for(10, timeout=5)
        assert (receiver.span_count, receiver.unique_span_count) == (10, 6)
        assert receiver.duplicate_count == 4
        assert receiver.span_ids() == ids(make_batch(4)) | ids(make_batch(2, first=10))
        assert receiver.spans() == []
        assert receiver.requests() == []
        assert receiver.request_count == 3


def test_wait_for_wakes_when_spans_arrive(receiver: OtlpReceiver, http: OtlpHttpExporter) -> None:
    sender = threading.Thread(target=http.deliver, args=(make_batch(3),))
    sender.start()

    assert receiver.wait_for(3, timeout=10)
    sender.join()
    assert not receiver.wait_for(4, timeout=0.05)
    assert receiver.wait_for_requests(1, timeout=0)


def test_clear(receiver: OtlpReceiver, http: OtlpHttpExporter) -> None:
    http.deliver(make_batch(2))
    receiver.clear()
    assert (receiver.span_count, receiver.request_count, receiver.span_ids()) == (0, 0, set())


def test_fail_next_counts_down(
    receiver: OtlpReceiver, http: OtlpHttpExporter, grpc_exp: OtlpGrpcExporter
) -> None:
    receiver.fail_next(3)

    results = [
        http.deliver(make_batch(1)),
        grpc_exp.deliver(make_batch(1)),
        http.deliver(make_batch(1)),
        grpc_exp.deliver(make_batch(1)),
    ]

    assert [r.delivered for r in results] == [False, False, False, True]
    assert [r.outcome for r in receiver.requests()] == ["503", "UNAVAILABLE", "503", "ok"]
    assert receiver.span_count == 1


def test_partial_success_until_reset(receiver: OtlpReceiver, http: OtlpHttpExporter) -> None:
    receiver.partial_success(1, "one too many", count=None)

    assert [http.deliver(make_batch(3)).rejected for _ in range(2)] == [1, 1]
    receiver.reset_faults()
    assert http.deliver(make_batch(3)).rejected == 0
    assert receiver.span_count == 2 + 2 + 3


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_require_header(
    receiver: OtlpReceiver, protocol: str, http: OtlpHttpExporter, grpc_exp: OtlpGrpcExporter
) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    kind = OtlpGrpcExporter if protocol == "grpc" else OtlpHttpExporter
    keyed = kind(endpoint=endpoint, headers={"x-api-key": SECRET}, timeout=5)
    receiver.require_header("X-Api-Key", SECRET)
    try:
        anonymous = (grpc_exp if protocol == "grpc" else http).deliver(make_batch(1))
        allowed = keyed.deliver(make_batch(1))
    finally:
        keyed.shutdown()

    assert (anonymous.delivered, anonymous.permanent) == (False, True)
    assert "x-api-key" in anonymous.message
    assert allowed.delivered


def test_http_protocol_errors(receiver: OtlpReceiver) -> None:
    body = encode_spans(make_batch(1)).SerializeToString()
    with httpx.Client(timeout=5) as client:
        wrong_path = client.post(receiver.http_base_endpoint + "/v1/logs", content=body)
        wrong_type = client.post(
            receiver.http_endpoint, content=body, headers={"Content-Type": "text/plain"}
        )
        garbage = client.post(receiver.http_endpoint, content=b"\xff\x00garbage", headers=PROTOBUF)
        bad_gzip = client.post(
            receiver.http_endpoint, content=body, headers={**PROTOBUF, "Content-Encoding": "gzip"}
        )
        good = client.post(receiver.http_endpoint, content=body, headers=PROTOBUF)

    assert (wrong_path.status_code, wrong_type.status_code) == (404, 415)
    assert (garbage.status_code, bad_gzip.status_code, good.status_code) == (400, 400, 200)
    assert status_pb2.Status.FromString(garbage.content).message == "undecodable request body"
    assert receiver.span_count == 1


def test_grpc_error_carries_retry_info(receiver: OtlpReceiver) -> None:
    receiver.fail(1, grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=1.25)
    exporter = OtlpGrpcExporter(endpoint=receiver.grpc_endpoint, timeout=5)
    try:
        result = exporter.deliver(make_batch(1))
    finally:
        exporter.shutdown()
    assert result.retry_after == 1.25


def test_tls_needs_both_files(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="both"):
        OtlpReceiver(tls_certificate_file="cert.pem")
