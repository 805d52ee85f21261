"""OTLP metrics over gRPC or HTTP/protobuf, as an optional signal that never troubles the traces.

Why not the SDK's ``OTLPMetricExporter``: it hides the status code (a backend without a metrics
service, such as Jaeger or Phoenix, answers ``UNIMPLEMENTED`` or 404, which means "stop", not
"retry") and logs every failed export at error level, once per export interval, forever. Here the
request is encoded by the SDK's ``encode_metrics`` and sent in one call: a missing metrics
service logs one warning and switches the metrics off for the run; any other failure logs one
warning until an export succeeds again. Nothing here raises into the caller.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final, Literal

import grpc
import httpx
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from .. import __version__
from ..errors import ConfigError
from ..sink._base import display_url
from ..sink._otlp_grpc import headers_to_metadata, resolve_grpc_target
from ..sink._tls import TlsFiles

__all__ = ["OtlpMetricsTransport", "Temporality", "metrics_url", "temporality_preference"]

_logger = logging.getLogger(__name__)

Temporality = Literal["cumulative", "delta", "lowmemory"]
MetricsProtocol = Literal["grpc", "http/protobuf"]

EXPORT_METHOD: Final = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
METRICS_PATH: Final = "/v1/metrics"
_PROTOBUF: Final = "application/x-protobuf"
#: Answers that mean "this backend takes no metrics": stop sending, say so once.
_NO_METRICS_STATUS: Final = frozenset({404, 405, 501})
_NO_METRICS_CODES: Final = frozenset({grpc.StatusCode.UNIMPLEMENTED})


def temporality_preference(
    preference: Temporality,
) -> dict[type, AggregationTemporality]:
    """The temporality per instrument, as ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``.

    ``cumulative``: everything cumulative (Prometheus). ``delta``: counters and histograms delta,
    up-down counters cumulative. ``lowmemory``: synchronous counters and histograms delta, the
    rest cumulative. (The specification's table; this module uses only counters and histograms.)

    Raises:
        ConfigError: another value.
    """
    cumulative = AggregationTemporality.CUMULATIVE
    delta = AggregationTemporality.DELTA
    if preference == "cumulative":
        first, observable = cumulative, cumulative
    elif preference == "delta":
        first, observable = delta, delta
    elif preference == "lowmemory":
        first, observable = delta, cumulative
    else:
        raise ConfigError(
            "otlp_metrics_temporality",
            f"expected cumulative, delta or lowmemory, not {preference!r}",
        )
    return {
        Counter: first,
        Histogram: first,
        ObservableCounter: observable,
        UpDownCounter: cumulative,
        ObservableUpDownCounter: cumulative,
        ObservableGauge: cumulative,
    }


def metrics_url(endpoint: str) -> str:
    """The OTLP/HTTP metrics URL for a collector endpoint.

    A traces URL (``.../v1/traces``) becomes ``.../v1/metrics``; a URL without a path gets
    ``/v1/metrics``; any other URL is used as it is (a metrics URL given on purpose).
    """
    text = endpoint.strip()
    url = httpx.URL(text)
    path = url.path.rstrip("/")
    if path.endswith("/v1/traces"):
        return str(url.copy_with(path=path[: -len("/v1/traces")] + METRICS_PATH))
    if not path:
        return str(url.copy_with(path=METRICS_PATH))
    return text


class OtlpMetricsTransport(MetricExporter):
    """A ``MetricExporter`` for one OTLP endpoint; see the module docstring for its failures.

    Args:
        protocol: ``grpc`` or ``http/protobuf``.
        endpoint: the collector, as for traces (``http://collector:4317``; for HTTP the traces
            URL or the base URL, see :func:`metrics_url`).
        headers: sent with every request (credentials: never logged).
        temporality: the temporality preference.
        timeout: seconds per request.
        compression: ``gzip`` or ``none``.
        insecure: for a gRPC endpoint without a scheme, as for traces.
        tls: certificate files, as for traces.
        transport: an httpx transport (tests).

    Raises:
        ConfigError: a bad endpoint, header, protocol or temporality.
    """

    def __init__(
        self,
        *,
        protocol: MetricsProtocol,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        temporality: Temporality = "cumulative",
        timeout: float = 10.0,
        compression: Literal["none", "gzip"] = "none",
        insecure: bool | None = None,
        tls: TlsFiles | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(preferred_temporality=temporality_preference(temporality))
        if timeout <= 0:
            raise ConfigError("otlp_timeout_ms", "must be greater than 0")
        if compression not in ("none", "gzip"):
            raise ConfigError("otlp_compression", f"expected gzip or none, not {compression!r}")
        headers = dict(headers or {})
        tls = tls or TlsFiles()
        self._timeout = timeout
        self._lock = threading.Lock()
        self._off = False
        self._failing = False
        self._grpc: grpc.UnaryUnaryMultiCallable[bytes, bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._http: httpx.Client | None = None
        self._gzip = compression == "gzip"
        if protocol == "grpc":
            target, secure = resolve_grpc_target(endpoint, insecure=insecure)
            self.target = f"{'https' if secure else 'http'}://{target}"
            self._metadata = headers_to_metadata(headers)
            options = [("grpc.primary_user_agent", f"letta-otel-exporter/{__version__}")]
            grpc_compression = grpc.Compression.Gzip if self._gzip else None
            self._channel = (
                grpc.secure_channel(
                    target,
                    grpc.ssl_channel_credentials(
                        root_certificates=tls.root_certificates,
                        private_key=tls.private_key,
                        certificate_chain=tls.certificate_chain,
                    ),
                    options=options,
                    compression=grpc_compression,
                )
                if secure
                else grpc.insecure_channel(target, options=options, compression=grpc_compression)
            )
            self._grpc = self._channel.unary_unary(
                EXPORT_METHOD, request_serializer=None, response_deserializer=None
            )
        elif protocol == "http/protobuf":
            try:
                url = metrics_url(endpoint)
                secure = httpx.URL(url).scheme == "https"
            except httpx.InvalidURL as exc:
                raise ConfigError("otlp_endpoint", f"not a URL ({exc})") from None
            self.target = display_url(url)
            request_headers = {
                "User-Agent": f"letta-otel-exporter/{__version__}",
                **headers,
                "Content-Type": _PROTOBUF,
            }
            if self._gzip:
                request_headers["Content-Encoding"] = "gzip"
            self._url = url
            self._http = httpx.Client(
                headers=request_headers,
                timeout=httpx.Timeout(timeout),
                verify=tls.ssl_context() if secure else False,
                transport=transport,
                follow_redirects=False,
                trust_env=False,
            )
        else:
            raise ConfigError("otlp_protocol", f"expected grpc or http/protobuf, not {protocol!r}")

    @property
    def switched_off(self) -> bool:
        """Whether the backend said it has no metrics service (nothing is sent any more)."""
        return self._off

    @property
    def healthy(self) -> bool:
        """Whether the last export went through (and metrics are on): worth a flush per batch."""
        return not self._off and not self._failing

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Send one request; never raises."""
        if self._off:
            return MetricExportResult.SUCCESS
        try:
            body = encode_metrics(metrics_data).SerializeToString()
        except Exception as exc:  # noqa: BLE001 - an optional signal never raises
            _logger.warning("GenAI metrics not sent: cannot encode them (%s)", exc)
            return MetricExportResult.FAILURE
        timeout = min(self._timeout, max(timeout_millis / 1000, 0.001))
        with self._lock:
            problem, no_service = (
                self._send_grpc(body, timeout) if self._grpc else self._send_http(body, timeout)
            )
        if no_service:
            self._off = True
            _logger.warning(
                "the collector at %s has no OTLP metrics service (%s): GenAI metrics are off "
                "for this run; traces are not affected",
                self.target,
                problem,
            )
            return MetricExportResult.SUCCESS
        if problem is not None:
            if not self._failing:
                _logger.warning(
                    "GenAI metrics not delivered to %s (%s); traces are not affected, "
                    "and this is not logged again until an export succeeds",
                    self.target,
                    problem,
                )
            self._failing = True
            return MetricExportResult.FAILURE
        if self._failing:
            _logger.info("GenAI metrics are delivered to %s again", self.target)
        self._failing = False
        return MetricExportResult.SUCCESS

    def _send_grpc(self, body: bytes, timeout: float) -> tuple[str | None, bool]:
        assert self._grpc is not None
        try:
            self._grpc(body, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            code = code or grpc.StatusCode.UNKNOWN
            return f"gRPC {code.name}", code in _NO_METRICS_CODES
        return None, False

    def _send_http(self, body: bytes, timeout: float) -> tuple[str | None, bool]:
        assert self._http is not None
        content = gzip.compress(body) if self._gzip else body
        try:
            response = self._http.post(self._url, content=content, timeout=timeout)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}", False
        status = response.status_code
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", status in _NO_METRICS_STATUS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered here."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Close the channel or the HTTP client."""
        if self._channel is not None:
            self._channel.close()
        if self._http is not None:
            self._http.close()
