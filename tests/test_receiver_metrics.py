"""The test receiver's OTLP metrics service: decoded points, the Jaeger-like switch, no
interference with the trace faults."""

from __future__ import annotations

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from exporter.sink import OtlpGrpcExporter
from testkit import OtlpReceiver
from tests._sink_spans import make_batch

pytestmark = pytest.mark.e2e

METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def request() -> metrics_service_pb2.ExportMetricsServiceRequest:
    point = metrics_pb2.NumberDataPoint(
        as_double=2.5,
        attributes=[common_pb2.KeyValue(key="model", value=common_pb2.AnyValue(string_value="m"))],
        exemplars=[metrics_pb2.Exemplar(as_double=2.5, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)],
        start_time_unix_nano=1,
        time_unix_nano=2,
    )
    metric = metrics_pb2.Metric(
        name="cost",
        unit="{USD}",
        sum=metrics_pb2.Sum(
            data_points=[point],
            aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
            is_monotonic=True,
        ),
    )
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metric])])
        ]
    )


def grpc_export(receiver: OtlpReceiver) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(request().SerializeToString(), timeout=5)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def http_export(receiver: OtlpReceiver) -> int:
    return httpx.post(
        f"{receiver.http_base_endpoint}/v1/metrics",
        content=request().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).status_code


def test_points_are_decoded_from_both_transports():
    with OtlpReceiver() as receiver:
        assert grpc_export(receiver) is grpc.StatusCode.OK
        assert http_export(receiver) == 200
        grpc_point, http_point = receiver.points("cost")
    assert (grpc_point.protocol, http_point.protocol) == ("grpc", "http")
    assert grpc_point.kind == "sum"
    assert grpc_point.temporality == "delta"
    assert grpc_point.value == 2.5
    assert dict(grpc_point.attributes) == {"model": "m"}
    (exemplar,) = grpc_point.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == ("01" * 16, "02" * 8)
    assert exemplar.value == 2.5


def test_the_switch_answers_like_a_backend_without_metrics():
    with OtlpReceiver(metrics_unimplemented=True) as receiver:
        assert grpc_export(receiver) is grpc.StatusCode.UNIMPLEMENTED
        assert http_export(receiver) == 404
        assert receiver.metric_refusals == 2
        receiver.set_metrics_unimplemented(False)
        assert http_export(receiver) == 200
        assert len(receiver.points()) == 1


def test_trace_faults_do_not_touch_metrics_and_metrics_do_not_count_as_trace_requests():
    with OtlpReceiver() as receiver:
        receiver.fail_next(1)
        assert grpc_export(receiver) is grpc.StatusCode.OK
        exporter = OtlpGrpcExporter(endpoint=receiver.grpc_endpoint)
        try:
            assert not exporter.deliver(make_batch(2)).delivered  # the fault is still there
            assert exporter.deliver(make_batch(2)).delivered
        finally:
            exporter.shutdown()
        assert len(receiver.requests()) == 2
        assert receiver.metric_requests == 1
