"""OTLP/HTTP with protobuf bodies: the request bytes and one httpx POST.

Why our own transport: the SDK's HTTP exporter retries inside ``export()`` and drops the
response body, so ``partial_success`` and ``Retry-After`` never reach the worker. This is the
whole protocol: POST the serialized ``ExportTraceServiceRequest`` (optionally gzipped), read
``ExportTraceServiceResponse`` on 2xx, and classify other statuses as the OTLP specification
says (429, 502, 503 and 504 are retryable, every other 4xx/5xx is not). The body is encoded by
:class:`~exporter.sink._encode.SpanEncoder`: the SDK encoder's bytes, several times faster.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Final, Literal

import httpx
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan

from .. import __version__
from .._retry import parse_retry_after
from ..errors import ConfigError
from ..models import load_json
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

__all__ = ["OtlpHttpExporter"]

DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318/v1/traces"

#: Retryable per the OTLP specification ("OTLP/HTTP Throttling / Failures"); every other 4xx
#: and 5xx is not (the same request would be refused again).
_RETRYABLE_STATUS: Final[frozenset[int]] = frozenset(
    {
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.GATEWAY_TIMEOUT,
    }
)

#: Statuses that mean the setup is wrong (credential, path, method), not the batch: delivery
#: stops and waits, nothing is dead-lettered.
_CONFIGURATION_STATUS: Final[frozenset[int]] = frozenset(
    {
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
        HTTPStatus.NOT_FOUND,
        HTTPStatus.METHOD_NOT_ALLOWED,
    }
)

_PROTOBUF: Final = "application/x-protobuf"
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Headers we set ourselves; a user header of the same name would corrupt the request.
_RESERVED: Final[frozenset[str]] = frozenset(
    {"content-type", "content-encoding", "content-length", "host", "transfer-encoding"}
)


def is_retryable_status(status_code: int) -> bool:
    """Whether an HTTP status from an OTLP receiver is worth sending the batch again."""
    return status_code in _RETRYABLE_STATUS


def http_failure_kind(status_code: int) -> FailureKind | None:
    """What an HTTP error status means for the batch (see :data:`~exporter.sink.FailureKind`),
    when it is more than ``permanent`` says (``None``: data for a permanent status, transient
    for a retryable one).

    A redirect is a configuration failure too: the endpoint is not the collector's URL (we do
    not follow redirects, since the body would be re-sent to wherever a server points).
    """
    if status_code in _CONFIGURATION_STATUS or 300 <= status_code < 400:
        return "configuration"
    if status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return "too_large"
    return None


class OtlpHttpExporter(DeliveringExporter):
    """POSTs span batches as ``application/x-protobuf`` once per :meth:`deliver`.

    Args:
        endpoint: the full traces URL (``settings.otlp_traces_url``, e.g.
            ``http://collector:4318/v1/traces``); ``https`` uses TLS.
        headers: sent with every request; typically API keys, so never shown in messages or logs.
        compression: ``gzip`` (``Content-Encoding: gzip``) or ``none``.
        timeout: seconds for each phase of the request (connect, write, read).
        certificate_file: PEM CA certificates trusted for the server (default: system roots).
        client_key_file: PEM private key for mutual TLS.
        client_certificate_file: PEM certificate chain for mutual TLS.
        transport: an httpx transport to use instead of the network (tests).
        log_interval: seconds during which an identical failure is logged once.

    Raises:
        ConfigError: bad endpoint, header name or TLS file.
    """

    _probe_when_empty = True

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_HTTP_ENDPOINT,
        headers: Mapping[str, str] | None = None,
        compression: Literal["none", "gzip"] = "none",
        timeout: float = 10.0,
        certificate_file: Path | str | None = None,
        client_key_file: Path | str | None = None,
        client_certificate_file: Path | str | None = None,
        transport: httpx.BaseTransport | None = None,
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        headers = dict(headers or {})
        super().__init__(
            target=display_url(endpoint), secrets=headers.values(), log_interval=log_interval
        )
        try:
            url = httpx.URL(endpoint.strip())
        except httpx.InvalidURL as exc:
            raise ConfigError("otlp_traces_endpoint", f"not a URL ({exc})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("otlp_traces_endpoint", "expected an http:// or https:// URL")
        if compression not in ("none", "gzip"):
            raise ConfigError("otlp_compression", f"expected gzip or none, not {compression!r}")
        if timeout <= 0:
            raise ConfigError("otlp_timeout_ms", "must be greater than 0")
        for name, value in headers.items():
            if not _TOKEN.match(name) or name.lower() in _RESERVED:
                raise ConfigError("otlp_headers", f"header name {name!r} cannot be used")
            if "\r" in value or "\n" in value:
                raise ConfigError("otlp_headers", f"the value of header {name!r} has a line break")
        self._gzip = compression == "gzip"
        self._timeout = timeout
        tls = TlsFiles.load(
            certificate_file=certificate_file,
            client_key_file=client_key_file,
            client_certificate_file=client_certificate_file,
        )
        self._secure = url.scheme == "https"
        request_headers = {
            "User-Agent": f"letta-otel-exporter/{__version__}",  # a user's own one wins
            **headers,
            "Content-Type": _PROTOBUF,
        }
        if self._gzip:
            request_headers["Content-Encoding"] = "gzip"
        self._url = url
        self._encoder = SpanEncoder()
        self._client = httpx.Client(
            headers=request_headers,
            timeout=httpx.Timeout(timeout),
            # Only build a context when TLS is used: it reads the system CA store.
            verify=tls.ssl_context() if self._secure else False,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    @property
    def secure(self) -> bool:
        """Whether the endpoint is ``https``."""
        return self._secure

    def request_bytes(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ``ExportTraceServiceRequest`` for ``spans``, as :meth:`_deliver` sends it."""
        return self._encoder.encode(spans)

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        return self._deliver_request(self._encoder.encode(spans))

    def _deliver_request(self, body: bytes) -> Delivery:
        if self._gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
        try:
            response = self._client.post(self._url, content=body)
        except httpx.TimeoutException as exc:
            return Delivery(
                delivered=False,
                message=f"{self.target}: no answer within {self._timeout:g}s "
                f"({type(exc).__name__})",
            )
        except httpx.TransportError as exc:
            reason = one_line(str(exc)) or type(exc).__name__
            if isinstance(exc, httpx.RemoteProtocolError):
                # Not HTTP/1.1 back: most often a gRPC (HTTP/2 only) port.
                return Delivery(
                    delivered=False,
                    message=f"{self.target}: this endpoint does not speak HTTP/1.1 (a gRPC "
                    "port?); set OTEL_EXPORTER_OTLP_PROTOCOL=grpc (port 4317 by default) or "
                    f"point at the OTLP/HTTP port ({reason})",
                    failure="configuration",
                )
            return Delivery(
                delivered=False,
                message=f"{self.target}: {type(exc).__name__}: {reason}",
            )
        except httpx.HTTPError as exc:  # InvalidURL, UnsupportedProtocol, ...: config mistakes
            return Delivery(
                delivered=False,
                message=f"{self.target}: {type(exc).__name__}: {one_line(str(exc))}",
                permanent=True,
                failure="configuration",
            )
        if response.is_success:
            return _accepted(response)
        return self._refused(response)

    def _refused(self, response: httpx.Response) -> Delivery:
        status = response.status_code
        reason = response.reason_phrase or _phrase(status)
        detail = _error_detail(response)
        return Delivery(
            delivered=False,
            message=f"{self.target}: HTTP {status} {reason}".rstrip()
            + (f": {detail}" if detail else ""),
            permanent=not is_retryable_status(status),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            failure=http_failure_kind(status),
        )

    def _close(self) -> None:
        self._client.close()


def _accepted(response: httpx.Response) -> Delivery:
    """A 2xx answer: read ``partial_success`` from the body (protobuf, or JSON if so labelled)."""
    body = response.content
    if not body:
        return Delivery(delivered=True)
    answer = ExportTraceServiceResponse()
    try:
        if "json" in response.headers.get("content-type", ""):
            json_format.Parse(body, answer, ignore_unknown_fields=True)
        else:
            answer.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError):
        # The status says accepted; an unreadable body only loses partial_success details.
        return Delivery(delivered=True, message="accepted, but the response body is unreadable")
    partial = answer.partial_success
    return Delivery(
        delivered=True,
        rejected=max(int(partial.rejected_spans), 0),
        message=one_line(partial.error_message),
    )


def _error_detail(response: httpx.Response) -> str:
    """The server's explanation: a ``google.rpc.Status`` (OTLP) or a short text body."""
    body = response.content
    if not body:
        return ""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(_PROTOBUF):
        try:
            return one_line(status_pb2.Status.FromString(body).message)
        except DecodeError:
            return ""
    text = body[:2000].decode("utf-8", "replace")
    if "json" in content_type:
        try:
            data = load_json(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return one_line(data["message"])
    if content_type.startswith(("text/", "application/json")):
        return one_line(text, 200)
    return ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
