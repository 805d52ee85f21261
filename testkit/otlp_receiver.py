"""A real OTLP receiver (traces and metrics) on local ports, for tests and benchmarks.

It speaks both transports a collector does: a gRPC ``TraceService`` (``grpc.server``) and
``POST /v1/traces`` over HTTP (stdlib ``ThreadingHTTPServer``, protobuf or JSON bodies,
optionally gzipped), on ``127.0.0.1`` with free ports. Faults can be switched while it runs:
refuse the next N requests (``UNAVAILABLE`` / 503), refuse everything permanently
(``INVALID_ARGUMENT`` / 400), answer ``partial_success``, answer slowly, require a header, or
go down entirely and come back on the same ports (:meth:`OtlpReceiver.stop` /
:meth:`OtlpReceiver.start`).

Usage::

    with OtlpReceiver() as receiver:
        exporter = OtlpGrpcExporter(endpoint=receiver.grpc_endpoint)
        exporter.deliver(spans)
        assert receiver.wait_for(len(spans))
        assert receiver.span_ids() == {...}

Metrics arrive at ``MetricsService/Export`` and ``POST /v1/metrics``; :meth:`OtlpReceiver.points`
gives their data points decoded (attributes, temporality, histogram buckets, exemplars). Trace
faults never apply to metrics; ``metrics_unimplemented=True`` (or
:meth:`OtlpReceiver.set_metrics_unimplemented`) answers ``UNIMPLEMENTED`` / 404 like a backend
without a metrics service (Jaeger, Phoenix).

With ``count_only=True`` only the ``(trace_id, span_id)`` pairs and duplicates are kept, so a
benchmark can check that every span arrived exactly once without storing them.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "OtlpReceiver",
    "ReceivedExemplar",
    "ReceivedPoint",
    "ReceivedRequest",
    "ReceivedSpan",
    "decode_any_value",
    "decode_attributes",
]

_logger = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]

TRACES_PATH: Final = "/v1/traces"
METRICS_PATH: Final = "/v1/metrics"
_PROTOBUF: Final = "application/x-protobuf"
_JSON: Final = "application/json"
#: Larger than the Collector's 4 MiB default: a benchmark may send big batches.
_MAX_MESSAGE: Final = 64 * 1024 * 1024
_BIND_TIMEOUT: Final = 5.0


def decode_any_value(value: common_pb2.AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a Python value (arrays as lists, kvlists as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [decode_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(attributes: Any) -> dict[str, Any]:
    """Repeated OTLP ``KeyValue`` as a dict."""
    return {item.key: decode_any_value(item.value) for item in attributes}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as it arrived, with the resource and scope it came under.

    Attributes:
        span: the decoded OTLP span.
        resource: its resource.
        scope: its instrumentation scope.
        protocol: how it came (``grpc`` or ``http``).
    """

    span: trace_pb2.Span
    resource: resource_pb2.Resource
    scope: common_pb2.InstrumentationScope
    protocol: Protocol

    @property
    def trace_id(self) -> str:
        """The trace id as 32 hex digits."""
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        """The span id as 16 hex digits."""
        return self.span.span_id.hex()

    @property
    def name(self) -> str:
        """The span name."""
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        """The span attributes, decoded."""
        return decode_attributes(self.span.attributes)

    @property
    def resource_attributes(self) -> dict[str, Any]:
        """The resource attributes, decoded."""
        return decode_attributes(self.resource.attributes)


@dataclass(frozen=True, slots=True)
class ReceivedExemplar:
    """An exemplar of a data point: a measurement and the span it was recorded in.

    Attributes:
        value: the measurement.
        trace_id: 32 hex digits (empty without a span).
        span_id: 16 hex digits (empty without a span).
        attributes: the measurement's attributes the point's ones left out.
    """

    value: float
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReceivedPoint:
    """One metric data point as it arrived (sum, gauge or histogram).

    Attributes:
        name: the metric name.
        unit: the metric unit.
        kind: ``sum``, ``gauge`` or ``histogram``.
        temporality: ``delta``, ``cumulative`` or ``unspecified`` (gauges).
        attributes: the point's attributes.
        value: a sum's or gauge's value (a histogram's sum).
        count: a histogram's count (0 otherwise).
        bucket_counts: a histogram's bucket counts.
        explicit_bounds: a histogram's bucket boundaries.
        exemplars: the point's exemplars.
        start_time_unix_nano: the start of the point's interval.
        time_unix_nano: the end of the point's interval.
        resource_attributes: the resource it came under.
        scope: the instrumentation scope name.
        protocol: ``grpc`` or ``http``.
    """

    name: str
    unit: str
    kind: Literal["sum", "gauge", "histogram"]
    temporality: Literal["delta", "cumulative", "unspecified"]
    attributes: Mapping[str, Any]
    value: float
    count: int
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    exemplars: tuple[ReceivedExemplar, ...]
    start_time_unix_nano: int
    time_unix_nano: int
    resource_attributes: Mapping[str, Any]
    scope: str
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One export request, accepted or not.

    Attributes:
        protocol: ``grpc`` or ``http``.
        headers: request headers (HTTP) or metadata (gRPC), lowercase names; empty in
            ``count_only`` mode.
        span_count: spans in the request (0 when it could not be decoded).
        content_type: the HTTP ``Content-Type`` (``application/grpc`` for gRPC).
        content_encoding: the HTTP ``Content-Encoding`` (``None`` for gRPC: gRPC decompresses
            before the handler sees the message).
        outcome: ``ok``, ``partial``, or the refusal (``UNAVAILABLE`` / ``503`` ...).
    """

    protocol: Protocol
    headers: Mapping[str, str]
    span_count: int
    content_type: str | None
    content_encoding: str | None
    outcome: str


@dataclass(slots=True)
class _Fault:
    remaining: int | None  # None: until cleared
    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    retry_after: float | None


@dataclass(slots=True)
class _Partial:
    remaining: int | None
    rejected: int
    message: str


@dataclass(frozen=True, slots=True)
class _Answer:
    """What to send back: an error status, or a success with an optional partial_success."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    http_status: int = 200
    message: str = ""
    retry_after: float | None = None
    rejected: int = 0

    @property
    def ok(self) -> bool:
        return self.grpc_code is grpc.StatusCode.OK


@dataclass(slots=True)
class _State:
    spans: list[ReceivedSpan] = field(default_factory=list)
    ids: set[tuple[bytes, bytes]] = field(default_factory=set)
    span_count: int = 0
    duplicates: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    request_count: int = 0
    points: list[ReceivedPoint] = field(default_factory=list)
    metric_requests: int = 0
    metric_refusals: int = 0


class OtlpReceiver:
    """A gRPC and an HTTP OTLP endpoint (traces and metrics) on local ports that remember what
    they got.

    Args:
        host: the interface to listen on.
        enable_grpc: serve OTLP/gRPC.
        enable_http: serve OTLP/HTTP.
        count_only: keep only span ids, counts and duplicates (no spans, no headers).
        max_workers: threads of the gRPC server.
        tls_certificate_file: PEM server certificate; with ``tls_key_file`` both endpoints use
            TLS and their URLs are ``https://``.
        tls_key_file: PEM private key of that certificate.
        grpc_port: the gRPC port (0: a free one).
        http_port: the HTTP port (0: a free one).
        metrics_unimplemented: answer metrics ``UNIMPLEMENTED`` / 404, like Jaeger.
        on_spans: called with the spans of each accepted trace request (outside the lock).
        on_points: called with the data points of each accepted metrics request.
        max_message_bytes: the largest request taken (gRPC's own
            ``grpc.max_receive_message_length``, which answers ``RESOURCE_EXHAUSTED`` "larger
            than max"; HTTP answers 413 for a longer body); ``None``: the default (64 MiB).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        enable_grpc: bool = True,
        enable_http: bool = True,
        count_only: bool = False,
        max_workers: int = 8,
        tls_certificate_file: Path | str | None = None,
        tls_key_file: Path | str | None = None,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_unimplemented: bool = False,
        on_spans: Callable[[list[ReceivedSpan]], None] | None = None,
        on_points: Callable[[list[ReceivedPoint]], None] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if (tls_certificate_file is None) != (tls_key_file is None):
            raise ValueError("TLS needs both tls_certificate_file and tls_key_file")
        if tls_certificate_file is not None and tls_key_file is not None:
            # Fail here, not in start()'s bind loop: a bad pair is not a busy port.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(tls_certificate_file), str(tls_key_file)
            )
        self._host = host
        self._serve_grpc = enable_grpc
        self._serve_http = enable_http
        self._count_only = count_only
        self._max_workers = max_workers
        self._tls: tuple[bytes, bytes] | None = (
            (Path(tls_key_file).read_bytes(), Path(tls_certificate_file).read_bytes())
            if tls_certificate_file is not None and tls_key_file is not None
            else None
        )
        self._tls_files = (tls_certificate_file, tls_key_file)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _State()
        self._fault: _Fault | None = None
        self._partial: _Partial | None = None
        self._delay = 0.0
        self._working = 0  # requests received and not answered yet (see wait_idle)
        self._required_header: tuple[str, str] | None = None
        self._stopping = threading.Event()
        self._grpc_server: grpc.Server | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._metrics_unimplemented = metrics_unimplemented
        self._on_spans = on_spans
        self._on_points = on_points
        self.max_message_bytes = max_message_bytes or _MAX_MESSAGE
        #: Requests refused for their size (gRPC refusals happen inside grpc-core, uncounted).
        self.too_large_refusals = 0

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the servers are listening."""
        return self._grpc_server is not None or self._http_server is not None

    def start(self) -> OtlpReceiver:
        """Listen; after :meth:`stop`, on the same ports as before (a collector coming back).

        Raises:
            OSError: a port could not be bound within a few seconds.
        """
        if self.running:
            return self
        self._stopping.clear()
        if self._serve_grpc:
            self._start_grpc()
        if self._serve_http:
            self._start_http()
        _logger.debug("OTLP receiver listening: grpc %s, http %s", self._grpc_port, self._http_port)
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections (a collector going down); data is kept."""
        self._stopping.set()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.close_connections()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None

    close = stop

    def _start_grpc(self) -> None:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                # Two live servers on one port would split the traffic silently.
                ("grpc.so_reuseport", 0),
            ],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _MetricsService(self), server
        )
        address = f"{self._host}:{self._grpc_port}"

        def bind() -> int:
            if self._tls is not None:
                credentials = grpc.ssl_server_credentials([self._tls])
                return int(server.add_secure_port(address, credentials))
            return int(server.add_insecure_port(address))

        self._grpc_port = _bind_retrying(bind, address)
        server.start()
        self._grpc_server = server

    def _start_http(self) -> None:
        address = (self._host, self._http_port)

        def bind() -> int:
            try:
                server = _HttpServer(address, _Handler, receiver=self)
            except OSError:
                return 0
            if self._tls is not None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                cert, key = self._tls_files
                context.load_cert_chain(str(cert), str(key))
                # Handshake in the handler thread, not in the accept loop.
                server.socket = context.wrap_socket(
                    server.socket, server_side=True, do_handshake_on_connect=False
                )
            self._http_server = server
            return int(server.server_address[1])

        self._http_port = _bind_retrying(bind, f"{self._host}:{self._http_port}")
        assert self._http_server is not None
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-http",
            daemon=True,
        )
        self._http_thread.start()

    # --- addresses ---------------------------------------------------------------------------
    @property
    def _scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    @property
    def grpc_port(self) -> int:
        """The gRPC port (0 before the first start)."""
        return self._grpc_port

    @property
    def http_port(self) -> int:
        """The HTTP port (0 before the first start)."""
        return self._http_port

    @property
    def grpc_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with TLS), for ``OtlpGrpcExporter``."""
        return f"{self._scheme}://{self._host}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """``http://127.0.0.1:PORT/v1/traces`` (``https`` with TLS), for ``OtlpHttpExporter``."""
        return f"{self._scheme}://{self._host}:{self._http_port}{TRACES_PATH}"

    @property
    def http_base_endpoint(self) -> str:
        """``http://127.0.0.1:PORT``, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` for HTTP takes it."""
        return f"{self._scheme}://{self._host}:{self._http_port}"

    # --- what arrived ------------------------------------------------------------------------
    def spans(self) -> list[ReceivedSpan]:
        """Every accepted span in arrival order (empty in ``count_only`` mode)."""
        with self._lock:
            return list(self._state.spans)

    def span_ids(self) -> set[tuple[str, str]]:
        """The distinct ``(trace_id, span_id)`` pairs accepted, as hex."""
        with self._lock:
            return {(trace_id.hex(), span_id.hex()) for trace_id, span_id in self._state.ids}

    def requests(self) -> list[ReceivedRequest]:
        """Every request received, refused ones included, in arrival order."""
        with self._lock:
            return list(self._state.requests)

    @property
    def span_count(self) -> int:
        """Spans accepted, duplicates included."""
        with self._lock:
            return self._state.span_count

    @property
    def unique_span_count(self) -> int:
        """Distinct ``(trace_id, span_id)`` pairs accepted."""
        with self._lock:
            return len(self._state.ids)

    @property
    def duplicate_count(self) -> int:
        """Spans accepted whose ``(trace_id, span_id)`` had been accepted before."""
        with self._lock:
            return self._state.duplicates

    @property
    def request_count(self) -> int:
        """Requests received, refused ones included."""
        with self._lock:
            return self._state.request_count

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` spans were accepted; ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.span_count >= count, timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being worked on (its delay); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._working == 0, timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` requests arrived (refused ones count); ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.request_count >= count, timeout)

    def points(self, name: str | None = None) -> list[ReceivedPoint]:
        """Every metric data point accepted (of metric ``name`` only, when given), in order."""
        with self._lock:
            return [p for p in self._state.points if name is None or p.name == name]

    @property
    def metric_requests(self) -> int:
        """Metrics requests received, refused ones included."""
        with self._lock:
            return self._state.metric_requests

    @property
    def metric_refusals(self) -> int:
        """Metrics requests answered ``UNIMPLEMENTED`` / 404."""
        with self._lock:
            return self._state.metric_refusals

    def wait_for_metric_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` metrics requests arrived; ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.metric_requests >= count, timeout)

    def set_metrics_unimplemented(self, unimplemented: bool = True) -> None:
        """Answer metrics ``UNIMPLEMENTED`` / 404 (a backend without a metrics service)."""
        with self._lock:
            self._metrics_unimplemented = unimplemented

    def clear(self) -> None:
        """Forget what arrived (faults stay as they are)."""
        with self._lock:
            self._state = _State()

    # --- faults ------------------------------------------------------------------------------
    def fail(
        self,
        count: int | None = 1,
        *,
        grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        http_status: int = 503,
        message: str = "injected failure",
        retry_after: float | None = None,
    ) -> None:
        """Refuse the next ``count`` requests (``None``: all, until :meth:`reset_faults`).

        Args:
            count: how many requests to refuse.
            grpc_code: the gRPC status to answer.
            http_status: the HTTP status to answer.
            message: the ``google.rpc.Status`` message sent with the refusal.
            retry_after: seconds to suggest (gRPC ``RetryInfo``, HTTP ``Retry-After`` rounded up).
        """
        with self._lock:
            self._fault = (
                _Fault(count, grpc_code, http_status, message, retry_after)
                if count is None or count > 0
                else None
            )

    def fail_next(self, count: int = 1, *, retry_after: float | None = None) -> None:
        """Answer ``UNAVAILABLE`` / 503 to the next ``count`` requests (retryable)."""
        self.fail(count, message="receiver unavailable (injected)", retry_after=retry_after)

    def reject_all(self, message: str = "bad data (injected)") -> None:
        """Answer ``INVALID_ARGUMENT`` / 400 to every request until :meth:`reset_faults`."""
        self.fail(
            None, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, http_status=400, message=message
        )

    def partial_success(self, rejected: int, message: str = "", *, count: int | None = 1) -> None:
        """Accept the next ``count`` requests but refuse ``rejected`` spans of each.

        The first ``rejected`` spans of such a request are dropped, the rest stored.
        """
        with self._lock:
            self._partial = (
                _Partial(count, rejected, message) if count is None or count > 0 else None
            )

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each request (0: answer at once)."""
        with self._lock:
            self._delay = max(seconds, 0.0)

    def require_header(self, name: str | None, value: str = "") -> None:
        """Refuse requests without ``name: value`` (``UNAUTHENTICATED`` / 401); ``None``: stop."""
        with self._lock:
            self._required_header = (name.lower(), value) if name is not None else None

    def reset_faults(self) -> None:
        """Answer normally again: no refusal, no partial success, no delay, no header check."""
        with self._lock:
            self._fault = None
            self._partial = None
            self._delay = 0.0
            self._required_header = None

    # --- the receiving -----------------------------------------------------------------------
    def _handle(
        self,
        protocol: Protocol,
        request: trace_service_pb2.ExportTraceServiceRequest | None,
        headers: Mapping[str, str],
        *,
        content_type: str | None,
        content_encoding: str | None,
    ) -> _Answer:
        """Decide the answer to one request and store what it accepted."""
        with self._lock:
            delay = self._delay
            self._working += 1
        try:
            return self._answer(protocol, request, headers, delay, content_type, content_encoding)
        finally:
            with self._changed:
                self._working -= 1
                self._changed.notify_all()

    def _answer(
        self,
        protocol: Protocol,
        request: trace_service_pb2.ExportTraceServiceRequest | None,
        headers: Mapping[str, str],
        delay: float,
        content_type: str | None,
        content_encoding: str | None,
    ) -> _Answer:
        if delay and self._stopping.wait(delay):
            # Stopped while "working": the client saw the connection drop, so accept nothing.
            return _Answer(grpc.StatusCode.UNAVAILABLE, 503, "receiver stopped")
        with self._changed:
            answer = self._decide(request, headers)
            state = self._state
            state.request_count += 1
            total = _count(request) if request is not None else 0
            stored_from = len(state.spans)
            if answer.ok and request is not None:
                self._store(request, protocol, skip=answer.rejected)
            new_spans = state.spans[stored_from:] if self._on_spans is not None else []
            if not self._count_only:
                state.requests.append(
                    ReceivedRequest(
                        protocol=protocol,
                        headers=dict(headers),
                        span_count=total,
                        content_type=content_type,
                        content_encoding=content_encoding,
                        outcome=_outcome(answer, protocol),
                    )
                )
            self._changed.notify_all()
        if new_spans and self._on_spans is not None:
            self._on_spans(new_spans)
        return answer

    def _handle_metrics(
        self, protocol: Protocol, request: metrics_service_pb2.ExportMetricsServiceRequest | None
    ) -> _Answer:
        """Answer one metrics request and store its data points; trace faults do not apply."""
        with self._changed:
            self._state.metric_requests += 1
            if self._metrics_unimplemented:
                self._state.metric_refusals += 1
                answer = _Answer(grpc.StatusCode.UNIMPLEMENTED, 404, "no metrics service")
            elif request is None:
                answer = _Answer(grpc.StatusCode.INVALID_ARGUMENT, 400, "undecodable request body")
            else:
                answer = _Answer()
            points = _decode_points(request, protocol) if answer.ok and request else []
            self._state.points.extend(points)
            self._changed.notify_all()
        if points and self._on_points is not None:
            self._on_points(points)
        return answer

    def _decide(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest | None,
        headers: Mapping[str, str],
    ) -> _Answer:
        # Called with the lock held.
        if request is None:
            return _Answer(grpc.StatusCode.INVALID_ARGUMENT, 400, "undecodable request body")
        if self._required_header is not None:
            name, value = self._required_header
            if headers.get(name) != value:
                # Never echo the value sent: it is a credential.
                return _Answer(
                    grpc.StatusCode.UNAUTHENTICATED, 401, f"missing or wrong header {name}"
                )
        fault = self._fault
        if fault is not None:
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = None
            return _Answer(fault.grpc_code, fault.http_status, fault.message, fault.retry_after)
        partial = self._partial
        if partial is not None:
            if partial.remaining is not None:
                partial.remaining -= 1
                if partial.remaining <= 0:
                    self._partial = None
            return _Answer(message=partial.message, rejected=partial.rejected)
        return _Answer()

    def _store(
        self, request: trace_service_pb2.ExportTraceServiceRequest, protocol: Protocol, *, skip: int
    ) -> None:
        # Called with the lock held; kept lean for benchmarks.
        state = self._state
        ids = state.ids
        keep = not self._count_only
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if skip > 0:
                        skip -= 1
                        continue
                    key = (span.trace_id, span.span_id)
                    if key in ids:
                        state.duplicates += 1
                    else:
                        ids.add(key)
                    state.span_count += 1
                    if keep:
                        state.spans.append(
                            ReceivedSpan(span, resource_spans.resource, scope_spans.scope, protocol)
                        )


def _count(request: trace_service_pb2.ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _outcome(answer: _Answer, protocol: Protocol) -> str:
    if not answer.ok:
        return answer.grpc_code.name if protocol == "grpc" else str(answer.http_status)
    return "partial" if answer.rejected or answer.message else "ok"


def _bind_retrying(bind: Callable[[], int], address: str) -> int:
    """Bind, retrying briefly: a port just released may take a moment to be free again."""
    deadline = time.monotonic() + _BIND_TIMEOUT
    pause = threading.Event()
    while True:
        try:
            port = bind()
        except RuntimeError:  # grpc raises when the port is taken
            port = 0
        if port:
            return port
        if time.monotonic() >= deadline:
            raise OSError(f"cannot listen on {address}")
        pause.wait(0.05)


def _retry_info_trailer(code: grpc.StatusCode, message: str, retry_after: float) -> bytes:
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=int(retry_after), nanos=int((retry_after - int(retry_after)) * 1e9)
        )
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return bytes(status.SerializeToString())


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # noqa: N802 - the generated servicer's name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        receiver = self._receiver
        headers = (
            {}
            if receiver._count_only
            else {
                key: value for key, value in context.invocation_metadata() if isinstance(value, str)
            }
        )
        answer = receiver._handle(
            "grpc", request, headers, content_type="application/grpc", content_encoding=None
        )
        response = trace_service_pb2.ExportTraceServiceResponse()
        if not answer.ok:
            if answer.retry_after is not None:
                context.set_trailing_metadata(
                    (
                        (
                            "grpc-status-details-bin",
                            _retry_info_trailer(
                                answer.grpc_code, answer.message, answer.retry_after
                            ),
                        ),
                    )
                )
            context.set_code(answer.grpc_code)
            context.set_details(answer.message)
            return response
        if answer.rejected or answer.message:
            response.partial_success.rejected_spans = answer.rejected
            response.partial_success.error_message = answer.message
        return response


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # noqa: N802 - the generated servicer's name
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        answer = self._receiver._handle_metrics("grpc", request)
        if not answer.ok:
            context.set_code(answer.grpc_code)
            context.set_details(answer.message)
        return metrics_service_pb2.ExportMetricsServiceResponse()


_TEMPORALITY: Final[Mapping[int, Literal["delta", "cumulative", "unspecified"]]] = {
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


def _decode_exemplars(exemplars: Any) -> tuple[ReceivedExemplar, ...]:
    return tuple(
        ReceivedExemplar(
            value=float(getattr(e, e.WhichOneof("value") or "as_double")),
            trace_id=e.trace_id.hex(),
            span_id=e.span_id.hex(),
            attributes=decode_attributes(e.filtered_attributes),
        )
        for e in exemplars
    )


def _decode_points(
    request: metrics_service_pb2.ExportMetricsServiceRequest, protocol: Protocol
) -> list[ReceivedPoint]:
    points: list[ReceivedPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = decode_attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope.name
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "gauge", "histogram"):
                    continue  # exponential histograms and summaries: not sent by the exporter
                data = getattr(metric, kind)
                temporality = _TEMPORALITY.get(
                    getattr(data, "aggregation_temporality", 0), "unspecified"
                )
                for point in data.data_points:
                    is_histogram = kind == "histogram"
                    number = point.WhichOneof("value") if not is_histogram else None
                    points.append(
                        ReceivedPoint(
                            name=metric.name,
                            unit=metric.unit,
                            kind=kind,
                            temporality=temporality,
                            attributes=decode_attributes(point.attributes),
                            value=float(point.sum)
                            if is_histogram
                            else float(getattr(point, number or "as_double")),
                            count=int(point.count) if is_histogram else 0,
                            bucket_counts=tuple(point.bucket_counts) if is_histogram else (),
                            explicit_bounds=tuple(point.explicit_bounds) if is_histogram else (),
                            exemplars=_decode_exemplars(point.exemplars),
                            start_time_unix_nano=int(point.start_time_unix_nano),
                            time_unix_nano=int(point.time_unix_nano),
                            resource_attributes=resource,
                            scope=scope,
                            protocol=protocol,
                        )
                    )
    return points


class _HttpServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that can cut its open keep-alive connections when stopped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        receiver: OtlpReceiver,
    ) -> None:
        self.receiver = receiver
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors and httpx use it
    timeout = 30  # idle keep-alive connections end eventually
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and benchmarks do not want a line per request on stderr."""

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True  # the body's end is unknown: the connection is spent
            self._reply(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required", "text/plain")
            return
        # Read the body before any answer, so that the keep-alive connection stays in step.
        raw = self.rfile.read(int(length))
        path = self.path.split("?", 1)[0]
        if len(raw) > self.server.receiver.max_message_bytes:
            with self.server.receiver._lock:
                self.server.receiver.too_large_refusals += 1
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request too large", "text/plain")
            return
        if path not in (TRACES_PATH, METRICS_PATH):
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower() or None
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body: bytes | None = raw
        try:
            if encoding == "gzip":
                body = gzip.decompress(raw)
            elif encoding == "deflate":
                body = zlib.decompress(raw)
            elif encoding not in (None, "identity"):
                self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"unknown encoding", "text/plain")
                return
        except (OSError, EOFError, zlib.error):
            body = None
        if content_type not in (_PROTOBUF, _JSON):
            self._reply(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"unsupported content type", "text/plain"
            )
            return
        receiver = self.server.receiver
        if path == METRICS_PATH:
            self._metrics(receiver, body, content_type)
            return
        request = _decode_http(body, content_type)
        headers = {} if receiver._count_only else {k.lower(): v for k, v in self.headers.items()}
        answer = receiver._handle(
            "http", request, headers, content_type=content_type, content_encoding=encoding
        )
        if answer.ok:
            response = trace_service_pb2.ExportTraceServiceResponse()
            if answer.rejected or answer.message:
                response.partial_success.rejected_spans = answer.rejected
                response.partial_success.error_message = answer.message
            self._reply(HTTPStatus.OK, _encode(response, content_type), content_type)
            return
        status = status_pb2.Status(code=answer.grpc_code.value[0], message=answer.message)
        extra = (
            {"Retry-After": str(math.ceil(answer.retry_after))}
            if answer.retry_after is not None
            else {}
        )
        self._reply(answer.http_status, _encode(status, content_type), content_type, extra)

    def _metrics(self, receiver: OtlpReceiver, body: bytes | None, content_type: str) -> None:
        request = _decode_http_metrics(body, content_type)
        answer = receiver._handle_metrics("http", request)
        if answer.ok:
            response = metrics_service_pb2.ExportMetricsServiceResponse()
            self._reply(HTTPStatus.OK, _encode(response, content_type), content_type)
            return
        if answer.http_status == HTTPStatus.NOT_FOUND:  # as a server with no such route answers
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        status = status_pb2.Status(code=answer.grpc_code.value[0], message=answer.message)
        self._reply(answer.http_status, _encode(status, content_type), content_type)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away, or stop() cut the connection
            self.close_connection = True


def _decode_http(
    body: bytes | None, content_type: str
) -> trace_service_pb2.ExportTraceServiceRequest | None:
    if body is None:
        return None
    try:
        if content_type == _JSON:
            from exporter.sink import otlp_json_to_request  # only JSON needs the id handling

            return otlp_json_to_request(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        return request
    except (DecodeError, ValueError):
        return None


def _decode_http_metrics(
    body: bytes | None, content_type: str
) -> metrics_service_pb2.ExportMetricsServiceRequest | None:
    if body is None:
        return None
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    try:
        if content_type == _JSON:
            json_format.Parse(body, request)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError):
        return None
    return request


def _encode(message: Any, content_type: str) -> bytes:
    if content_type == _JSON:
        return json.dumps(json_format.MessageToDict(message)).encode()
    return bytes(message.SerializeToString())
