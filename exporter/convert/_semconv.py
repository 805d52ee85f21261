"""Every attribute name, span name part and well-known value the converter emits, in one place.

GenAI names follow the OpenTelemetry GenAI semantic conventions, status **Development**, as
published in ``open-telemetry/semantic-conventions-genai`` (docs/gen-ai/gen-ai-spans.md,
gen-ai-agent-spans.md, openai.md, docs/registry/attributes/gen-ai.md and the input/output/system
message JSON schemas; read at commit 002c8a6, "Unreleased" after the move out of the core
repository). The stable ``server.*`` and ``error.type`` attributes are those of core semantic
conventions v1.41.1, the version those documents link to, hence :data:`SCHEMA_URL`.

We do not import these names from ``opentelemetry-semantic-conventions``: in 0.66b2 the GenAI
names are marked deprecated ("moved to the GenAI repository") and their enums warn on import.

Names under ``letta.`` are this project's own; the README's span reference lists every one of them.

Viewer names (the block "viewers" below) are those LLM viewers read beside the GenAI ones, looked
up in their own sources rather than guessed:

* OpenInference, read by Arize Phoenix (and by Langfuse as a fallback): ``input.value``,
  ``output.value``, their ``*.mime_type``, ``session.id``, ``user.id`` and ``llm.cost.*``, from
  ``Arize-ai/openinference`` ``spec/semantic_conventions.md`` at commit 1fe497f
  (openinference-semantic-conventions 0.1.32).
* Langfuse, ``packages/shared/src/server/otel/OtelIngestionProcessor.ts`` of ``langfuse/langfuse``
  at commit 6275144: ``extractInputAndOutput`` reads ``input.value``/``output.value``,
  ``extractSessionId`` ``session.id`` (then ``gen_ai.conversation.id``), ``extractUserId``
  ``user.id``, and ``extractCostDetails`` ``gen_ai.usage.cost`` (USD, the total), then
  ``llm.cost.total``.
"""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.41.1"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
SCOPE_NAME: Final = "letta-otel-exporter"

# --- GenAI (Development) ---------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_OUTPUT_TYPE: Final = "gen_ai.output.type"

GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"

GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"

GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"

GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_DESCRIPTION: Final = "gen_ai.agent.description"

# Opt-in content (JSON strings on spans, per "Recording content on attributes").
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_TOOL_DEFINITIONS: Final = "gen_ai.tool.definitions"

# OpenAI refinements (only when gen_ai.provider.name is "openai").
OPENAI_API_TYPE: Final = "openai.api.type"
OPENAI_REQUEST_SERVICE_TIER: Final = "openai.request.service_tier"
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
OPENAI_RESPONSE_SYSTEM_FINGERPRINT: Final = "openai.response.system_fingerprint"

# --- viewers (OpenInference / Phoenix, Langfuse; versions in the module docstring) -----------
INPUT_VALUE: Final = "input.value"
INPUT_MIME_TYPE: Final = "input.mime_type"
OUTPUT_VALUE: Final = "output.value"
OUTPUT_MIME_TYPE: Final = "output.mime_type"
SESSION_ID: Final = "session.id"
USER_ID: Final = "user.id"
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"
LLM_COST_TOTAL: Final = "llm.cost.total"
LLM_COST_PROMPT: Final = "llm.cost.prompt"
LLM_COST_COMPLETION: Final = "llm.cost.completion"
MIME_JSON: Final = "application/json"
MIME_TEXT: Final = "text/plain"

# --- core, stable (v1.41.1) ------------------------------------------------------------------
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
ERROR_TYPE_OTHER: Final = "_OTHER"
SERVICE_NAME: Final = "service.name"
TELEMETRY_SDK_LANGUAGE: Final = "telemetry.sdk.language"
TELEMETRY_SDK_NAME: Final = "telemetry.sdk.name"
TELEMETRY_SDK_VERSION: Final = "telemetry.sdk.version"

# --- well-known values -----------------------------------------------------------------------
OP_CHAT: Final = "chat"
OP_GENERATE_CONTENT: Final = "generate_content"
OP_INVOKE_AGENT: Final = "invoke_agent"

PROVIDER_OPENAI: Final = "openai"
PROVIDER_ANTHROPIC: Final = "anthropic"
PROVIDER_GCP_GEMINI: Final = "gcp.gemini"
PROVIDER_GCP_VERTEX_AI: Final = "gcp.vertex_ai"
PROVIDER_GCP_GEN_AI: Final = "gcp.gen_ai"
PROVIDER_AZURE_OPENAI: Final = "azure.ai.openai"
PROVIDER_AWS_BEDROCK: Final = "aws.bedrock"

# --- letta.* (this project's own) ------------------------------------------------------------
LETTA_PROVIDER_TRACE_ID: Final = "letta.provider_trace.id"
LETTA_PROVIDER_TRACE_CREATED_AT: Final = "letta.provider_trace.created_at"
LETTA_PROVIDER_TRACE_UPDATED_AT: Final = "letta.provider_trace.updated_at"
LETTA_STEP_ID: Final = "letta.step.id"
LETTA_RUN_ID: Final = "letta.run.id"
LETTA_AGENT_ID: Final = "letta.agent.id"
LETTA_AGENT_NAME: Final = "letta.agent.name"
LETTA_AGENT_TAGS: Final = "letta.agent.tags"
LETTA_AGENT_TYPE: Final = "letta.agent.type"
LETTA_AGENT_PROJECT_ID: Final = "letta.agent.project_id"
LETTA_CALL_TYPE: Final = "letta.call_type"
LETTA_SOURCE: Final = "letta.source"
LETTA_ORG_ID: Final = "letta.org.id"
LETTA_USER_ID: Final = "letta.user.id"
LETTA_CREATED_BY_ID: Final = "letta.created_by_id"
LETTA_LAST_UPDATED_BY_ID: Final = "letta.last_updated_by_id"
LETTA_LATENCY_MS: Final = "letta.latency_ms"
LETTA_BILLING_PREFIX: Final = "letta.billing"
LETTA_LLM_CONFIG_PREFIX: Final = "letta.llm_config"
LETTA_COMPACTION_PREFIX: Final = "letta.compaction_settings"
LETTA_EXTRA_PREFIX: Final = "letta.extra"

LETTA_DURATION_SOURCE: Final = "letta.duration.source"
LETTA_TIMESTAMP_SOURCE: Final = "letta.timestamp.source"
LETTA_USAGE_SOURCE: Final = "letta.usage.source"
LETTA_REQUEST_SHAPE: Final = "letta.request.shape"
LETTA_RESPONSE_SHAPE: Final = "letta.response.shape"
LETTA_REQUEST_STREAM_SOURCE: Final = "letta.request.stream.source"
LETTA_REQUEST_TOOL_COUNT: Final = "letta.request.tool_count"
LETTA_REQUEST_JSON: Final = "letta.request.json"
LETTA_RESPONSE_JSON: Final = "letta.response.json"
LETTA_CONTENT_TRUNCATED: Final = "letta.content.truncated"
LETTA_CONVERT_WARNINGS: Final = "letta.convert.warnings"

LETTA_STEP_ERROR_MESSAGE: Final = "letta.step.error.message"
LETTA_RUN_TRACE_ID: Final = "letta.run.trace_id"
LETTA_RUN_SPAN_ID: Final = "letta.run.span_id"
LETTA_RUN_STATUS: Final = "letta.run.status"
LETTA_RUN_STOP_REASON: Final = "letta.run.stop_reason"
LETTA_RUN_STEP_COUNT: Final = "letta.run.step_count"
LETTA_RUN_CREATED_AT: Final = "letta.run.created_at"
LETTA_RUN_COMPLETED_AT: Final = "letta.run.completed_at"
LETTA_LINK_KIND: Final = "letta.link.kind"
LETTA_RUN_FAILED_CALLS: Final = "letta.run.failed_calls"
LETTA_COST_SOURCE: Final = "letta.cost.source"
LETTA_SUMMARIZATION: Final = "letta.summarization"

# Values of letta.call_type and letta.cost.source.
CALL_TYPE_SUMMARIZATION: Final = "summarization"
COST_SOURCE_LIBRARY: Final = "genai-prices"
COST_SOURCE_USER: Final = "user"

# Values of letta.duration.source / letta.timestamp.source / letta.usage.source.
SOURCE_LATENCY_MS: Final = "latency_ms"
SOURCE_METRICS_START: Final = "step_metrics.llm_request_start_ns"
SOURCE_METRICS_DURATION: Final = "step_metrics.llm_request_ns"
SOURCE_NONE: Final = "none"
SOURCE_CREATED_AT: Final = "created_at"
SOURCE_UPDATED_AT: Final = "updated_at"
SOURCE_STEP_CREATED_AT: Final = "step.created_at"
SOURCE_RESPONSE_JSON: Final = "response_json"
SOURCE_STEP: Final = "step"
SOURCE_REQUEST_JSON: Final = "request_json"
SOURCE_RESPONSE_SHAPE: Final = "response_shape"
