"""OTLP/gRPC: one unary ``TraceService/Export`` call with the request bytes, nothing more.

Why not the SDK's ``OTLPSpanExporter``: it retries inside ``export()`` (a second retry layer
under the worker's), and it hides ``partial_success`` and the status code the worker needs to
choose between "re-send later" and "dead-letter". The transport here is one stub call; the
classification follows the OTLP specification's table of retryable gRPC codes.

The request is encoded by :class:`~exporter.sink._encode.SpanEncoder` (the SDK encoder's bytes,
several times faster) and sent as bytes through the same method the generated
``TraceServiceStub`` calls, with no serializer: gRPC passes bytes through as they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan

from .. import __version__
from ..errors import ConfigError
from ._base import (
    DEFAULT_LOG_INTERVAL,
    DeliveringExporter,
    Delivery,
    FailureKind,
    display_url,
    one_line,
)
from ._encode import SpanEncoder
from ._tls import TlsFiles

__all__ = ["OtlpGrpcExporter", "resolve_grpc_target"]

_logger = logging.getLogger(__name__)

DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
#: The method ``TraceServiceStub.Export`` calls (``opentelemetry/proto/collector/trace/v1``).
EXPORT_METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

#: Retryable per the OTLP specification ("OTLP/gRPC Throttling / Failures").
#: ``RESOURCE_EXHAUSTED`` is retryable only when the server sends ``RetryInfo`` (it can recover).
_RETRYABLE_CODES: Final[frozenset[grpc.StatusCode]] = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_WITH_RETRY_INFO: Final[frozenset[grpc.StatusCode]] = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED}
)

#: The collector cannot take anything from us until the setup changes (a credential, the
#: service, the port): delivery stops and waits, nothing is dead-lettered.
_CONFIGURATION_CODES: Final[frozenset[grpc.StatusCode]] = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
#: What a gRPC server says of a request over its ``grpc.max_receive_message_length``.
_TOO_LARGE: Final = "larger than max"

_COMPRESSION: Final[Mapping[str, grpc.Compression]] = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
}

#: Channel defaults. The reconnect backoff is capped so that, after a collector outage, the
#: worker's next re-send finds the channel connecting again within seconds, not gRPC's default
#: two minutes.
_DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.primary_user_agent", f"letta-otel-exporter/{__version__}"),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_send_message_length", -1),
)

_METADATA_KEY: Final = re.compile(r"^[0-9a-z_.\-]+$")
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_RETRY_INFO_KEY: Final = "google.rpc.retryinfo-bin"
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


#: What grpc-core says when the server answered in HTTP/1.1 (an OTLP/HTTP port).
_SPEAKS_HTTP1: Final = "Expected SETTINGS frame"


def resolve_grpc_target(endpoint: str, *, insecure: bool | None = None) -> tuple[str, bool]:
    """The gRPC target (``host:port``) and whether to use TLS, as the OTel specification says.

    A scheme decides: ``http://`` is plaintext and ``https://`` is TLS, whatever ``insecure``
    says. Without a scheme (``collector:4317``), ``insecure=True`` means plaintext and
    anything else TLS (``OTEL_EXPORTER_OTLP_INSECURE`` defaults to false).

    Args:
        endpoint: ``http://host:port``, ``https://host:port`` or ``host:port``.
        insecure: ``OTEL_EXPORTER_OTLP_[TRACES_]INSECURE``; ``None`` when not set.

    Returns:
        ``(target, secure)``; a missing port is 80 for ``http`` and 443 otherwise.

    Raises:
        ConfigError: the endpoint has another scheme or no host.
    """
    text = endpoint.strip()
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in ("http", "https"):
            raise ConfigError(
                "otlp_endpoint", f"gRPC endpoint scheme must be http or https, not {scheme}"
            )
        secure = scheme == "https"
        rest = text[match.end() :]
    else:
        secure = insecure is not True
        rest = text
    authority, _, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # credentials in the URL are not gRPC's business
    if path.strip("/"):
        _logger.warning("the gRPC endpoint's path /%s is ignored (gRPC has no URL path)", path)
    if not authority:
        raise ConfigError("otlp_endpoint", f"gRPC endpoint {display_url(text)} has no host")
    has_port = "]:" in authority if authority.startswith("[") else ":" in authority  # [IPv6]
    if not has_port:
        authority = f"{authority}:{443 if secure else 80}"
    return authority, secure


def headers_to_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str | bytes], ...]:
    """OTLP headers as gRPC metadata: lowercase keys, ``-bin`` keys with bytes values.

    Raises:
        ConfigError: a header name is not a valid metadata key (the value is never shown).
    """
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers.items():
        key = name.strip().lower()
        if not _METADATA_KEY.match(key) or key.startswith("grpc-"):
            raise ConfigError(
                "otlp_headers", f"header name {name!r} is not a valid gRPC metadata key"
            )
        metadata.append((key, value.encode() if key.endswith("-bin") else value))
    return tuple(metadata)


def retry_delay(metadata: Sequence[tuple[str, str | bytes]] | None) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` in the trailing metadata, if the server sent one.

    Both places are read: the rich status details (``grpc-status-details-bin``, what the
    Collector sends) and the bare ``google.rpc.retryinfo-bin`` key some servers use.
    """
    for key, value in metadata or ():
        if not isinstance(value, bytes):
            continue
        try:
            if key == _RETRY_INFO_KEY:
                return _seconds(error_details_pb2.RetryInfo.FromString(value))
            if key == _STATUS_DETAILS_KEY:
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):  # type: ignore[arg-type]
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return _seconds(info)
        except DecodeError:
            continue
    return None


def _seconds(info: error_details_pb2.RetryInfo) -> float:
    seconds = float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9
    return max(seconds, 0.0)


def classify_grpc_error(code: grpc.StatusCode, *, retry_after: float | None) -> bool:
    """Whether a failed call with this status is permanent (``True``) or worth sending again."""
    if code in _RETRYABLE_CODES:
        return False
    return not (code in _RETRYABLE_WITH_RETRY_INFO and retry_after is not None)


def grpc_failure_kind(code: grpc.StatusCode, *, detail: str) -> FailureKind | None:
    """What a failed call means for the batch (see :data:`~exporter.sink.FailureKind`), when it
    is more than ``permanent`` says (``None``: data if permanent, else transient)."""
    if code in _CONFIGURATION_CODES or _SPEAKS_HTTP1 in detail:
        return "configuration"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in detail:
        return "too_large"
    return None


class OtlpGrpcExporter(DeliveringExporter):
    """Sends span batches to ``TraceService/Export`` once per :meth:`deliver`.

    Args:
        endpoint: ``http://host:port`` (plaintext), ``https://host:port`` (TLS) or
            ``host:port`` (``insecure`` decides).
        headers: sent as metadata with every request (lowercased keys); typically API keys, so
            never shown in messages or logs.
        compression: ``gzip`` or ``none``.
        timeout: seconds one export may take (``OTEL_EXPORTER_OTLP_TIMEOUT`` / 1000).
        insecure: plaintext for a scheme-less endpoint (see :func:`resolve_grpc_target`).
        certificate_file: PEM CA certificates trusted for the server (default: system roots).
        client_key_file: PEM private key for mutual TLS.
        client_certificate_file: PEM certificate chain for mutual TLS.
        channel_options: extra ``grpc.*`` channel arguments (they override the defaults).
        log_interval: seconds during which an identical failure is logged once.

    Raises:
        ConfigError: bad endpoint, header name or TLS file.
    """

    _probe_when_empty = True

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_GRPC_ENDPOINT,
        headers: Mapping[str, str] | None = None,
        compression: Literal["none", "gzip"] = "none",
        timeout: float = 10.0,
        insecure: bool | None = None,
        certificate_file: Path | str | None = None,
        client_key_file: Path | str | None = None,
        client_certificate_file: Path | str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        headers = dict(headers or {})
        target, secure = resolve_grpc_target(endpoint, insecure=insecure)
        super().__init__(
            target=f"{'https' if secure else 'http'}://{target}",
            secrets=headers.values(),
            log_interval=log_interval,
        )
        if compression not in _COMPRESSION:
            raise ConfigError("otlp_compression", f"expected gzip or none, not {compression!r}")
        if timeout <= 0:
            raise ConfigError("otlp_timeout_ms", "must be greater than 0")
        self._secure = secure
        self._metadata = headers_to_metadata(headers)
        self._timeout = timeout
        self._compression = _COMPRESSION[compression]
        tls = TlsFiles.load(
            certificate_file=certificate_file,
            client_key_file=client_key_file,
            client_certificate_file=client_certificate_file,
        )
        if tls.configured and not secure:
            _logger.warning(
                "TLS certificate files are ignored: the gRPC endpoint %s is plaintext", self.target
            )
        options = dict(_DEFAULT_CHANNEL_OPTIONS)
        options.update(dict(channel_options))
        self._channel = (
            grpc.secure_channel(
                target,
                grpc.ssl_channel_credentials(
                    root_certificates=tls.root_certificates,
                    private_key=tls.private_key,
                    certificate_chain=tls.certificate_chain,
                ),
                options=list(options.items()),
                compression=self._compression,
            )
            if secure
            else grpc.insecure_channel(
                target, options=list(options.items()), compression=self._compression
            )
        )
        self._encoder = SpanEncoder()
        # request_serializer=None: the request is already the serialized message.
        self._export: grpc.UnaryUnaryMultiCallable[bytes, ExportTraceServiceResponse] = (
            self._channel.unary_unary(
                EXPORT_METHOD,
                request_serializer=None,
                response_deserializer=ExportTraceServiceResponse.FromString,
            )
        )

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        return self._secure

    @property
    def compression(self) -> grpc.Compression:
        """The channel's compression."""
        return self._compression

    def request_bytes(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ``ExportTraceServiceRequest`` for ``spans``, as :meth:`_deliver` sends it."""
        return self._encoder.encode(spans)

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        return self._deliver_request(self._encoder.encode(spans))

    def _deliver_request(self, request: bytes) -> Delivery:
        try:
            response = self._export(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            return self._failure(err)
        partial = response.partial_success
        return Delivery(
            delivered=True,
            rejected=max(int(partial.rejected_spans), 0),
            message=one_line(partial.error_message),
        )

    def _failure(self, err: grpc.RpcError) -> Delivery:
        if not isinstance(err, grpc.Call):  # every stub error is a Call; be safe anyway
            return Delivery(delivered=False, message=f"{self.target}: gRPC error {err}")
        code = err.code() or grpc.StatusCode.UNKNOWN
        delay = retry_delay(err.trailing_metadata())
        detail = one_line(err.details() or "")
        message = f"{self.target}: gRPC {code.name}" + (f": {detail}" if detail else "")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            message += f" (timeout {self._timeout:g}s)"
        if _SPEAKS_HTTP1 in detail:
            # An HTTP/1.1 server (an OTLP/HTTP port) answered the HTTP/2 preface.
            message = (
                f"{self.target}: this endpoint speaks HTTP/1.1, not gRPC; set "
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (OTLP/HTTP, port 4318 by default) "
                f"or point at the gRPC port ({detail})"
            )
        return Delivery(
            delivered=False,
            message=message,
            permanent=classify_grpc_error(code, retry_after=delay),
            retry_after=delay,
            failure=grpc_failure_kind(code, detail=detail),
        )

    def _close(self) -> None:
        self._channel.close()
