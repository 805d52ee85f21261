"""The sink: span batches to OTLP/gRPC, OTLP/HTTP, OTLP JSON lines or the console.

Every exporter here is a ``SpanExporter`` whose :meth:`~DeliveringExporter.deliver` sends a
batch once and returns a :class:`Delivery` (accepted? how many spans refused? worth re-sending?
after how long?). Nothing here retries: the worker re-sends a failed batch while the checkpoint
waits, so there is one retry layer per hop.
"""

from __future__ import annotations

from ._base import DeliveringExporter, Delivery, ExportStats, FailureKind
from ._console import ConsoleExporter, format_span
from ._factory import deliver
from ._jsonfile import OtlpJsonFileExporter, otlp_json_to_request, spans_to_otlp_json
from ._otlp_grpc import OtlpGrpcExporter, resolve_grpc_target
from ._otlp_http import OtlpHttpExporter

__all__ = [
    "ConsoleExporter",
    "DeliveringExporter",
    "Delivery",
    "ExportStats",
    "FailureKind",
    "OtlpGrpcExporter",
    "OtlpHttpExporter",
    "OtlpJsonFileExporter",
    "deliver",
    "format_span",
    "otlp_json_to_request",
    "resolve_grpc_target",
    "spans_to_otlp_json",
]
