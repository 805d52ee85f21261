"""Choosing the sink from the settings, and delivering to any ``SpanExporter``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..settings import Settings
from ._base import DeliveringExporter, Delivery, one_line
from ._console import ConsoleExporter
from ._jsonfile import OtlpJsonFileExporter
from ._otlp_grpc import OtlpGrpcExporter
from ._otlp_http import OtlpHttpExporter

__all__ = ["build_exporter", "deliver"]

_logger = logging.getLogger(__name__)


def build_exporter(settings: Settings) -> DeliveringExporter:
    """The exporter ``settings.effective_sink`` and ``otlp_protocol`` ask for.

    Logs one INFO line naming the sink and where it sends (never the headers' values).

    Raises:
        ConfigError: a bad endpoint, header name or TLS file.
        SinkError: the output file cannot be opened.
    """
    sink = settings.effective_sink
    exporter: DeliveringExporter
    if sink == "console":
        exporter = ConsoleExporter()
        _logger.info("sink: console (one line per span on stdout)")
        return exporter
    if sink == "file":
        exporter = OtlpJsonFileExporter(settings.output)
        _logger.info("sink: OTLP JSON lines to %s", exporter.target)
        return exporter
    headers = settings.otlp_header_dict()
    timeout = settings.otlp_timeout_ms / 1000
    if settings.otlp_protocol == "grpc":
        exporter = OtlpGrpcExporter(
            endpoint=settings.otlp_traces_url,
            headers=headers,
            compression=settings.otlp_compression,
            timeout=timeout,
            insecure=settings.otlp_insecure,
            certificate_file=settings.otlp_certificate,
            client_key_file=settings.otlp_client_key,
            client_certificate_file=settings.otlp_client_certificate,
        )
        protocol = "gRPC"
    else:
        exporter = OtlpHttpExporter(
            endpoint=settings.otlp_traces_url,
            headers=headers,
            compression=settings.otlp_compression,
            timeout=timeout,
            certificate_file=settings.otlp_certificate,
            client_key_file=settings.otlp_client_key,
            client_certificate_file=settings.otlp_client_certificate,
        )
        protocol = "HTTP/protobuf"
    _logger.info(
        "sink: OTLP %s to %s (compression %s, timeout %gs, %d header(s))",
        protocol,
        exporter.target,
        settings.otlp_compression,
        timeout,
        len(headers),
    )
    return exporter


def deliver(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> Delivery:
    """Send one batch through any exporter and say what happened; never raises.

    Ours answer through :meth:`DeliveringExporter.deliver` (partial success, permanence, retry
    delay); any other ``SpanExporter`` (``InMemorySpanExporter``, a stock OTLP exporter) has its
    ``SUCCESS``/``FAILURE`` folded into a :class:`Delivery` that is never permanent, since a
    bare ``FAILURE`` does not say retrying is hopeless.
    """
    if isinstance(exporter, DeliveringExporter):
        return exporter.deliver(spans)
    if not spans:
        return Delivery(delivered=True)
    name = type(exporter).__name__
    try:
        result = exporter.export(spans)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Delivery(
            delivered=False, message=f"{name} raised {type(exc).__name__}: {one_line(str(exc))}"
        )
    if result is SpanExportResult.SUCCESS:
        return Delivery(delivered=True)
    return Delivery(delivered=False, message=f"{name} returned {getattr(result, 'name', result)}")
