"""GenAI semantic-convention metrics from the exported LLM spans, over OTLP metrics.

From every delivered model-call span: ``gen_ai.client.token.usage`` and
``gen_ai.client.operation.duration`` (histograms with the conventions' attributes and buckets),
cache and reasoning token counters, the calls' cost in USD and a count of calls with no price;
exemplars point at the spans. Each span is counted once (:class:`CountedLedger`).

Usage::

    metrics = GenAIMetrics.from_config(endpoint=..., protocol="grpc", resource=resource,
                                       ledger_path=state_file.with_suffix(".metrics-ledger"))
    ...
    metrics.record_delivered(batch)   # after the collector accepted the batch
    ...
    metrics.shutdown()
"""

from __future__ import annotations

from ._ledger import CountedLedger, span_key
from ._measure import CallMeasurement, measure_span
from ._metrics import GenAIMetrics
from ._names import (
    COST_ATTRIBUTE,
    COST_METRIC,
    DURATION_BUCKETS,
    DURATION_METRIC,
    TOKEN_BUCKETS,
    TOKEN_USAGE_METRIC,
    UNPRICED_METRIC,
)
from ._transport import OtlpMetricsTransport, metrics_url, temporality_preference

__all__ = [
    "COST_ATTRIBUTE",
    "COST_METRIC",
    "DURATION_BUCKETS",
    "DURATION_METRIC",
    "TOKEN_BUCKETS",
    "TOKEN_USAGE_METRIC",
    "UNPRICED_METRIC",
    "CallMeasurement",
    "CountedLedger",
    "GenAIMetrics",
    "OtlpMetricsTransport",
    "measure_span",
    "metrics_url",
    "span_key",
    "temporality_preference",
]
