"""The metric names, units, bucket boundaries and attributes the GenAI metrics use, in one place.

``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` (histograms, their
attributes and their explicit bucket boundaries) follow the OpenTelemetry GenAI semantic
conventions, status **Development**, as published in ``open-telemetry/semantic-conventions-genai``
docs/gen-ai/gen-ai-metrics.md (read at commit 004902b, which links core semantic conventions
v1.42.0 for ``server.*`` and ``error.type``). The cache and reasoning token counters take their
names from the same repository's draft docs/gen-ai/gen-ai-token-metrics.md (commit 066d4a7):
``gen_ai.client.inference.usage.*`` with ``gen_ai.token.modality`` (``unknown``: Letta does not
break usage down by modality).

The conventions define no cost metric. :data:`COST_METRIC` and :data:`UNPRICED_METRIC` are this
project's own; their unit ``{USD}`` is an annotation (UCUM has no currency), so the Collector's
Prometheus translation names them ``gen_ai_client_cost_total`` and
``gen_ai_client_cost_unpriced_total``.

Span attribute names come from :mod:`exporter.convert._semconv`; the cost attribute is read from
:data:`COST_ATTRIBUTE` alone.
"""

# ruff: noqa: S105 - "token" in these names is an LLM token, not a credential

from __future__ import annotations

from typing import Final

from ..convert import _semconv as semconv

__all__ = [
    "COST_ATTRIBUTE",
    "COST_METRIC",
    "DURATION_BUCKETS",
    "DURATION_METRIC",
    "TOKEN_BUCKETS",
    "TOKEN_USAGE_METRIC",
    "UNPRICED_METRIC",
]

#: The span attribute holding a call's price in USD (a float), as the converter sets it.
COST_ATTRIBUTE: Final = semconv.GEN_AI_USAGE_COST

METER_NAME: Final = semconv.SCOPE_NAME

TOKEN_USAGE_METRIC: Final = "gen_ai.client.token.usage"
TOKEN_USAGE_UNIT: Final = "{token}"
DURATION_METRIC: Final = "gen_ai.client.operation.duration"
DURATION_UNIT: Final = "s"
CACHE_READ_METRIC: Final = "gen_ai.client.inference.usage.cache_read.input_tokens"
CACHE_WRITE_METRIC: Final = "gen_ai.client.inference.usage.cache_write.input_tokens"
REASONING_METRIC: Final = "gen_ai.client.inference.usage.reasoning.output_tokens"
COST_METRIC: Final = "gen_ai.client.cost"
COST_UNIT: Final = "{USD}"
UNPRICED_METRIC: Final = "gen_ai.client.cost.unpriced"
UNPRICED_UNIT: Final = "{call}"

#: ExplicitBucketBoundaries the conventions give for ``gen_ai.client.token.usage``.
TOKEN_BUCKETS: Final[tuple[float, ...]] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
#: ExplicitBucketBoundaries the conventions give for ``gen_ai.client.operation.duration``.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"
GEN_AI_TOKEN_MODALITY: Final = "gen_ai.token.modality"
MODALITY_UNKNOWN: Final = "unknown"

#: Span operations that are not a model call: they carry no tokens and time a whole run.
NOT_MODEL_CALLS: Final[frozenset[str]] = frozenset(
    {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"}
)

#: Attributes every GenAI metric carries when the span has them (the conventions' list).
CALL_ATTRIBUTES: Final[tuple[str, ...]] = (
    semconv.GEN_AI_OPERATION_NAME,
    semconv.GEN_AI_PROVIDER_NAME,
    semconv.GEN_AI_REQUEST_MODEL,
    semconv.GEN_AI_RESPONSE_MODEL,
    semconv.SERVER_ADDRESS,
    semconv.SERVER_PORT,
)
#: Only ``gen_ai.client.operation.duration`` carries ``error.type``.
ERROR_ATTRIBUTE: Final = semconv.ERROR_TYPE
#: Opt-in (cardinality: one series per agent).
AGENT_ATTRIBUTES: Final[tuple[str, ...]] = (semconv.GEN_AI_AGENT_NAME, semconv.GEN_AI_AGENT_ID)

INPUT_TOKENS: Final = semconv.GEN_AI_USAGE_INPUT_TOKENS
OUTPUT_TOKENS: Final = semconv.GEN_AI_USAGE_OUTPUT_TOKENS
CACHE_READ_TOKENS: Final = semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
CACHE_WRITE_TOKENS: Final = semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
REASONING_TOKENS: Final = semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
OPERATION: Final = semconv.GEN_AI_OPERATION_NAME
REQUEST_MODEL: Final = semconv.GEN_AI_REQUEST_MODEL
RESPONSE_MODEL: Final = semconv.GEN_AI_RESPONSE_MODEL
