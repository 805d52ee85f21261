"""ProviderTrace (+ Step, StepMetrics, Run, Agent) -> OpenTelemetry GenAI spans. Pure: no I/O.

Everything the exporter knows about semantic conventions lives in this package. It reads no
environment, does no I/O, logs nothing and reads no clock: every timestamp comes from the
records, every id is derived from a record id, so converting twice gives the same spans.
The README's span reference lists every attribute it sets.
"""

from __future__ import annotations

from ._ids import run_span_id_for, span_id_for, trace_id_for_run
from ._options import ConvertOptions, TraceContext
from ._prices import Cost, ModelPrices, PriceTable, parse_prices, price_of
from ._semconv import SCHEMA_URL, SCOPE_NAME, SEMCONV_VERSION
from ._spans import (
    SCOPE,
    build_resource,
    conversion_notes,
    convert_run,
    convert_trace,
    needs_run_span,
)
from ._summary import RunSummary, summarize_call

__all__ = [
    "SCHEMA_URL",
    "SCOPE",
    "SCOPE_NAME",
    "SEMCONV_VERSION",
    "ConvertOptions",
    "Cost",
    "ModelPrices",
    "PriceTable",
    "RunSummary",
    "TraceContext",
    "build_resource",
    "conversion_notes",
    "convert_run",
    "convert_trace",
    "needs_run_span",
    "parse_prices",
    "price_of",
    "run_span_id_for",
    "span_id_for",
    "summarize_call",
    "trace_id_for_run",
]
