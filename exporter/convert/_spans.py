"""ProviderTrace (+ Step, StepMetrics, Run, Agent) -> ``ReadableSpan``: the assembly.

Trace shape: one trace per Letta run. The run is an ``invoke_agent`` span (kind INTERNAL) built by
:func:`convert_run`; each LLM call is a CLIENT span whose parent is that run span (a local
parent, ``is_remote=False``, even when the run span is exported later). A trace with no run gets
a trace of its own, derived from its step id, and no parent. With ``join_letta_traces`` and a
Step carrying the Letta server's own OTel trace id, the LLM span is a root in the server's trace
instead, linked to the run span (``letta.run.trace_id`` / ``letta.run.span_id`` say where).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from exporter import __version__
from exporter.models import Agent, ProviderTrace, Run, Step, StepMetrics

from . import _semconv as sc
from ._attributes import INT64_MAX, SpanAttributes
from ._content import add_content
from ._ids import (
    parse_trace_id_hex,
    run_span_id_for,
    span_id_for,
    trace_id_for_record,
    trace_id_for_run,
)
from ._options import ConvertOptions, TraceContext
from ._prices import price_of
from ._providers import parse_endpoint, provider_name
from ._sanitize import Cleaner, scrub_url_userinfo
from ._shapes import (
    Shape,
    Usage,
    read_error,
    read_request,
    read_response,
    request_shape,
    response_shape,
)
from ._summary import RunSummary
from ._timing import call_timing, datetime_to_ns, run_timing

__all__ = [
    "SCOPE",
    "build_resource",
    "conversion_notes",
    "convert_run",
    "convert_trace",
    "needs_run_span",
]

SCOPE: Final = InstrumentationScope(sc.SCOPE_NAME, __version__, sc.SCHEMA_URL)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_DEFAULT_OPTIONS: Final = ConvertOptions()
_PROVIDER_SHAPES: Final = frozenset(
    {Shape.OPENAI_CHAT, Shape.OPENAI_RESPONSES, Shape.ANTHROPIC, Shape.GOOGLE}
)
# Step token counts describe the step's agent call; a summarization call in the same step has its
# own usage, so the step's counts stand in only for agent-step calls.
_STEP_USAGE_CALL_TYPES: Final = frozenset({None, "agent_step"})
# Model names and agent tags are copied from records: a runaway value (a 1 MB model name, 10,000
# tags) must not become a 16 KB span name or a 259 KB attribute. Capped ones are named in
# letta.content.truncated.
MAX_MODEL_CHARS: Final = 256
MAX_TAGS: Final = 64
# Letta stop reasons that mean the run ended because something went wrong.
_ERROR_STOP_REASONS: Final = frozenset(
    {
        "error",
        "llm_api_error",
        "invalid_llm_response",
        "invalid_tool_call",
        "context_window_overflow_in_system_prompt",
    }
)
_EMPTY_SUMMARY: Final = RunSummary()

_STEP_STRINGS: Final = (
    ("status", "letta.step.status"),
    ("stop_reason", "letta.step.stop_reason"),
    ("error_type", "letta.step.error_type"),
    ("model", "letta.step.model"),
    ("model_handle", "letta.step.model_handle"),
    ("model_endpoint", "letta.step.model_endpoint"),
    ("provider_name", "letta.step.provider_name"),
    ("provider_category", "letta.step.provider_category"),
    ("provider_id", "letta.step.provider_id"),
    ("origin", "letta.step.origin"),
    ("organization_id", "letta.step.organization_id"),
    ("project_id", "letta.step.project_id"),
    ("tid", "letta.step.tid"),
    ("trace_id", "letta.step.trace_id"),
    ("request_id", "letta.step.request_id"),
    ("feedback", "letta.step.feedback"),
)
_STEP_INTS: Final = (
    ("context_window_limit", "letta.step.context_window_limit"),
    ("prompt_tokens", "letta.step.prompt_tokens"),
    ("completion_tokens", "letta.step.completion_tokens"),
    ("total_tokens", "letta.step.total_tokens"),
    ("cached_input_tokens", "letta.step.cached_input_tokens"),
    ("cache_write_tokens", "letta.step.cache_write_tokens"),
    ("reasoning_tokens", "letta.step.reasoning_tokens"),
)
_METRICS_INTS: Final = (
    ("llm_request_ns", "letta.step.llm_request_ns"),
    ("tool_execution_ns", "letta.step.tool_execution_ns"),
    ("step_ns", "letta.step.step_ns"),
    ("step_start_ns", "letta.step.step_start_ns"),
    ("llm_request_start_ns", "letta.step.llm_request_start_ns"),
)
_METRICS_STRINGS: Final = (
    ("template_id", "letta.step.template_id"),
    ("base_template_id", "letta.step.base_template_id"),
    ("project_id", "letta.step.project_id"),
)
_STEP_INTS_WHERE: Final = tuple((f, a, f"step.{f}") for f, a in _STEP_INTS)
_METRICS_INTS_WHERE: Final = tuple((f, a, f"metrics.{f}") for f, a in _METRICS_INTS)
_USAGE_ATTRIBUTES: Final = (
    ("input_tokens", sc.GEN_AI_USAGE_INPUT_TOKENS),
    ("output_tokens", sc.GEN_AI_USAGE_OUTPUT_TOKENS),
    ("cache_read_tokens", sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
    ("cache_creation_tokens", sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
    ("reasoning_tokens", sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
)


def build_resource(
    service_name: str = "letta", attributes: Mapping[str, str] | None = None
) -> Resource:
    """The resource of every span: ``service.name``, the caller's attributes, ``telemetry.sdk.*``.

    Built without ``Resource.create`` on purpose: that reads ``OTEL_RESOURCE_ATTRIBUTES`` from the
    environment, which is the caller's job (the CLI parses it into ``attributes``).

    Args:
        service_name: ``service.name``; it wins over a ``service.name`` in ``attributes``.
        attributes: extra resource attributes (e.g. parsed ``OTEL_RESOURCE_ATTRIBUTES``).
    """
    values: dict[str, Any] = {
        sc.TELEMETRY_SDK_LANGUAGE: "python",
        sc.TELEMETRY_SDK_NAME: "opentelemetry",
        sc.TELEMETRY_SDK_VERSION: sdk_version,
    }
    for key, value in (attributes or {}).items():
        if not (isinstance(key, str) and key):
            continue
        if isinstance(value, bool | float | str) or (
            isinstance(value, int) and -INT64_MAX - 1 <= value <= INT64_MAX
        ):
            values[key] = value
        else:
            values[key] = str(value)
    values[sc.SERVICE_NAME] = service_name or "letta"
    return Resource(values, schema_url=sc.SCHEMA_URL)


def convert_trace(
    trace: ProviderTrace,
    context: TraceContext | None = None,
    *,
    options: ConvertOptions = _DEFAULT_OPTIONS,
    resource: Resource,
) -> ReadableSpan:
    """One LLM call as an OTel GenAI CLIENT span.

    Args:
        trace: the provider trace.
        context: what else is known (step, metrics, run, agent); all optional.
        options: content policy, size limit, redaction, trace joining.
        resource: from :func:`build_resource`.

    Returns:
        The span. Never raises on a schema-valid trace: what cannot be read is left out and
        listed in ``letta.convert.warnings``.
    """
    ctx = context or TraceContext()
    try:
        return _convert_trace(trace, ctx, options, resource)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; say what happened
        return _fallback_span(trace, resource, exc)


def convert_run(
    run: Run,
    *,
    agent: Agent | None = None,
    first_start_ns: int | None = None,
    last_end_ns: int | None = None,
    step_count: int = 0,
    summary: RunSummary | None = None,
    options: ConvertOptions = _DEFAULT_OPTIONS,
    resource: Resource,
) -> ReadableSpan:
    """The ``invoke_agent`` span of a run: the parent of its LLM spans.

    Args:
        run: the run.
        agent: the agent, for its name (the span is named after it).
        first_start_ns: the earliest start of the run's LLM spans; the span starts no later.
        last_end_ns: the latest end of the run's LLM spans; the span ends no earlier.
        step_count: how many steps the run had (``letta.run.step_count``).
        summary: what the run's calls said (:func:`summarize_call`, merged): the run's input
            and answer, failed calls, and the agent, provider, model and user when neither the
            run nor the agent says (file mode).
        options: the content policy, size limit and redaction apply here too.
        resource: from :func:`build_resource`.

    Returns:
        The span (kind INTERNAL, status ERROR when the run failed, or when calls failed and
        the run ended on an error). Never raises.
    """
    try:
        return _convert_run(
            run,
            agent,
            first_start_ns,
            last_end_ns,
            step_count,
            summary or _EMPTY_SUMMARY,
            options,
            resource,
        )
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; say what happened
        return _fallback_run_span(run, resource, exc)


def _convert_run(
    run: Run,
    agent: Agent | None,
    first_start_ns: int | None,
    last_end_ns: int | None,
    step_count: int,
    summary: RunSummary,
    options: ConvertOptions,
    resource: Resource,
) -> ReadableSpan:
    out = SpanAttributes(options.redactors, options.max_bytes)
    cleaner = Cleaner(options.redactors)
    agent_id = _first_str(run.agent_id, agent.id if agent else None, summary.agent_id)
    agent_name = _capped_name(agent.name if agent else None)
    values = out.values
    values[sc.GEN_AI_OPERATION_NAME] = sc.OP_INVOKE_AGENT
    out.put_str(sc.GEN_AI_AGENT_ID, agent_id)
    out.put_str(sc.GEN_AI_AGENT_NAME, agent_name)
    _put_session(out, run.conversation_id, agent_id, summary.user_id)
    if agent is not None:
        _convert_agent(agent, out, cleaner, description=True)
    # File mode has no agent record: the calls say which provider and model the run used.
    if sc.GEN_AI_PROVIDER_NAME not in values:
        out.put_str(sc.GEN_AI_PROVIDER_NAME, summary.provider)
    if sc.GEN_AI_REQUEST_MODEL not in values:
        _put_model(out, sc.GEN_AI_REQUEST_MODEL, summary.model)
    if options.content != "none":
        if summary.input_text:
            values[sc.INPUT_VALUE] = summary.input_text
            values[sc.INPUT_MIME_TYPE] = sc.MIME_TEXT
        if summary.output_text:
            values[sc.OUTPUT_VALUE] = summary.output_text
            values[sc.OUTPUT_MIME_TYPE] = sc.MIME_TEXT
    if summary.failed_calls:
        values[sc.LETTA_RUN_FAILED_CALLS] = min(summary.failed_calls, INT64_MAX)
    values[sc.LETTA_RUN_ID] = run.id
    out.put_str(sc.LETTA_AGENT_ID, agent_id)
    out.put_str(sc.LETTA_RUN_STATUS, run.status)
    out.put_str(sc.LETTA_RUN_STOP_REASON, run.stop_reason)
    count = step_count if isinstance(step_count, int) and not isinstance(step_count, bool) else 0
    values[sc.LETTA_RUN_STEP_COUNT] = min(max(count, 0), INT64_MAX)
    if run.created_at is not None:
        values[sc.LETTA_RUN_CREATED_AT] = run.created_at.isoformat()
    if run.completed_at is not None:
        values[sc.LETTA_RUN_COMPLETED_AT] = run.completed_at.isoformat()
    out.put_bool("letta.run.background", run.background)
    out.put_str("letta.run.base_template_id", run.base_template_id)
    out.put_int("letta.run.ttft_ns", run.ttft_ns, where="run.ttft_ns")
    out.put_int("letta.run.total_duration_ns", run.total_duration_ns, where="run.total_duration_ns")
    out.flatten("letta.run.metadata", run.metadata, cleaner)
    out.flatten("letta.run.request_config", run.request_config, cleaner)
    out.flatten("letta.run.extra", run.model_extra, cleaner)

    status = Status(StatusCode.UNSET)
    if run.status == "failed":
        message = _run_error_message(run) or summary.last_error_message
        values[sc.ERROR_TYPE] = _run_error_type(run, _run_error_message(run), summary)
        status = _error_status(message, out)
    elif _ended_on_failed_calls(run, summary):
        values[sc.ERROR_TYPE] = _run_error_type(run, None, summary)
        status = _error_status(summary.last_error_message or run.stop_reason, out)

    start, end = run_timing(run, first_start_ns, last_end_ns, out)
    trace_id = trace_id_for_run(run.id)
    name = (
        out.fit_text(f"{sc.OP_INVOKE_AGENT} {agent_name or agent_id}")
        if (agent_name or agent_id)
        else sc.OP_INVOKE_AGENT
    )
    return ReadableSpan(
        name=name,
        context=SpanContext(
            trace_id, run_span_id_for(run.id), is_remote=False, trace_flags=_SAMPLED
        ),
        parent=None,
        resource=resource,
        attributes=out.finish(),
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def needs_run_span(trace: ProviderTrace, context: TraceContext | None = None) -> bool:
    """Whether this call hangs under an ``invoke_agent`` run span (so one must be exported).

    A call with a run does, except a summarization call no agent is known for: a compaction is
    not an agent run, and a run span with no agent would be a bare ``invoke_agent``. Such a call
    stays in the run's trace as a root of its own.
    """
    ctx = context or TraceContext()
    run_id = _first_str(
        trace.run_id,
        ctx.step.run_id if ctx.step else None,
        ctx.metrics.run_id if ctx.metrics else None,
        ctx.run.id if ctx.run else None,
    )
    if run_id is None:
        return False
    if trace.call_type != sc.CALL_TYPE_SUMMARIZATION:
        return True
    return (
        _first_str(
            trace.agent_id,
            ctx.step.agent_id if ctx.step else None,
            ctx.agent.id if ctx.agent else None,
        )
        is not None
    )


def conversion_notes(span: ReadableSpan) -> tuple[str, ...]:
    """What the converter had to leave out, shorten or distrust on this span, for a log line.

    The converter logs nothing; the caller logs these (rate-limited): the span's
    ``letta.convert.warnings`` and the attributes named in ``letta.content.truncated``.
    """
    attrs = span.attributes or {}
    notes = [str(w) for w in attrs.get(sc.LETTA_CONVERT_WARNINGS, ())]  # type: ignore[union-attr]
    truncated = attrs.get(sc.LETTA_CONTENT_TRUNCATED)
    if truncated:
        notes.append(f"shortened to the size limits: {', '.join(map(str, truncated))}")  # type: ignore[arg-type]
    return tuple(notes)


# --- the LLM span ----------------------------------------------------------------------------
def _as_dict(value: Any, where: str, out: SpanAttributes) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    out.warn(f"{where}: expected an object, got {type(value).__name__}")
    return {}


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def _record_key(
    trace: ProviderTrace, step_id: str | None, run_id: str | None, out: SpanAttributes
) -> str:
    if trace.id:
        return trace.id
    out.warn("id: missing; the span id is derived from step_id, call_type and created_at")
    created = trace.created_at.isoformat() if trace.created_at else ""
    return f"anonymous:{step_id}:{run_id}:{trace.call_type}:{created}"


@dataclass(frozen=True, slots=True)
class _Identity:
    """Where an LLM span sits: its own context, its parent, its links."""

    context: SpanContext
    parent: SpanContext | None
    links: tuple[Link, ...]


def _identity(
    record_key: str,
    step_id: str | None,
    run_id: str | None,
    letta_trace: str | None,
    out: SpanAttributes,
    *,
    under_run: bool = True,
) -> _Identity:
    """The run's trace with the run span as parent; else a trace of its own (or Letta's).

    ``under_run=False`` (a summarization call no agent is known for) keeps the run's trace but
    no parent: there is no agent run span to hang it under.
    """
    span_id = span_id_for(record_key)
    parent: SpanContext | None = None
    links: tuple[Link, ...] = ()
    if run_id:
        trace_id = trace_id_for_run(run_id)
        if under_run:
            parent = SpanContext(
                trace_id, run_span_id_for(run_id), is_remote=False, trace_flags=_SAMPLED
            )
    elif step_id is None:
        trace_id = trace_id_for_record(record_key)
    else:
        trace_id = trace_id_for_record(step_id)
    letta_trace_id = parse_trace_id_hex(letta_trace)
    if letta_trace_id is not None:
        # Joined: a root in the Letta server's trace (its span ids are not recorded), linked to
        # the run span, whose ids the attributes keep so the run can still be found.
        if parent is not None:
            links = (Link(parent, {sc.LETTA_LINK_KIND: "run"}),)
            out.values[sc.LETTA_RUN_TRACE_ID] = f"{parent.trace_id:032x}"
            out.values[sc.LETTA_RUN_SPAN_ID] = f"{parent.span_id:016x}"
        trace_id, parent = letta_trace_id, None
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
    return _Identity(context, parent, links)


def _convert_trace(
    trace: ProviderTrace, ctx: TraceContext, options: ConvertOptions, resource: Resource
) -> ReadableSpan:
    step, metrics, run, agent = ctx.step, ctx.metrics, ctx.run, ctx.agent
    out = SpanAttributes(options.redactors, options.max_bytes)
    cleaner = Cleaner(options.redactors)
    values = out.values
    request = _as_dict(trace.request_json, "request_json", out)
    response = _as_dict(trace.response_json, "response_json", out)
    llm_config = trace.llm_config if isinstance(trace.llm_config, dict) else {}

    # Identity: which trace, which parent, which span id.
    run_id = _first_str(
        trace.run_id,
        step.run_id if step else None,
        metrics.run_id if metrics else None,
        run.id if run else None,
    )
    step_id = _first_str(trace.step_id, step.id if step else None)
    agent_id = _first_str(
        trace.agent_id, step.agent_id if step else None, agent.id if agent else None
    )
    letta_trace = step.trace_id if (options.join_letta_traces and step) else None
    summarization = trace.call_type == sc.CALL_TYPE_SUMMARIZATION
    if summarization:
        values[sc.LETTA_SUMMARIZATION] = True
    identity = _identity(
        _record_key(trace, step_id, run_id, out),
        # A compaction outside any run is a trace of its own, never a step's.
        None if summarization and not run_id else step_id,
        run_id,
        letta_trace,
        out,
        under_run=not summarization or agent_id is not None,
    )

    # What API, which provider, where.
    resp_shape = response_shape(response)
    req_shape = request_shape(request, resp_shape)
    endpoint = parse_endpoint(
        _first_str(step.model_endpoint if step else None, llm_config.get("model_endpoint"))
    )
    provider = provider_name(
        llm_config.get("model_endpoint_type"),
        endpoint,
        _first_str(llm_config.get("provider_name"), step.provider_name if step else None),
        resp_shape if resp_shape in _PROVIDER_SHAPES else req_shape,
    )
    openai = provider == sc.PROVIDER_OPENAI
    operation = sc.OP_GENERATE_CONTENT if Shape.GOOGLE in (req_shape, resp_shape) else sc.OP_CHAT
    values[sc.GEN_AI_OPERATION_NAME] = operation
    out.put_str(sc.GEN_AI_PROVIDER_NAME, provider)
    facts = read_request(request, req_shape, out, openai=openai)
    model = _put_model(
        out,
        sc.GEN_AI_REQUEST_MODEL,
        _first_str(facts.model, llm_config.get("model"), step.model if step else None),
    )
    if endpoint is not None:
        values[sc.SERVER_ADDRESS] = endpoint.host
        if endpoint.port is not None:
            values[sc.SERVER_PORT] = endpoint.port
    values[sc.LETTA_REQUEST_SHAPE] = req_shape.value
    values[sc.LETTA_RESPONSE_SHAPE] = resp_shape.value
    if facts.stream:
        values[sc.GEN_AI_REQUEST_STREAM] = True
        values[sc.LETTA_REQUEST_STREAM_SOURCE] = sc.SOURCE_REQUEST_JSON
    elif resp_shape is Shape.LETTA_STREAM:
        # request_json never says "stream" on Letta; only a streaming call leaves this shape.
        values[sc.GEN_AI_REQUEST_STREAM] = True
        values[sc.LETTA_REQUEST_STREAM_SOURCE] = sc.SOURCE_RESPONSE_SHAPE
    if facts.tool_count is not None:
        values[sc.LETTA_REQUEST_TOOL_COUNT] = facts.tool_count

    # Response, usage, outcome.
    usage = read_response(response, resp_shape, out, openai=openai)
    _put_model(out, sc.GEN_AI_RESPONSE_MODEL, values.get(sc.GEN_AI_RESPONSE_MODEL))
    usage_source = sc.SOURCE_RESPONSE_JSON
    error = read_error(response)
    if (
        usage is None
        and step is not None
        and error is None
        and trace.call_type in _STEP_USAGE_CALL_TYPES
    ):
        usage, usage_source = _step_usage(step), sc.SOURCE_STEP
    if usage is not None and not usage.empty:
        for field, attribute in _USAGE_ATTRIBUTES:
            count = getattr(usage, field)
            if count is not None:
                values[attribute] = count
        values[sc.LETTA_USAGE_SOURCE] = usage_source
        _put_cost(out, usage, provider, model, trace, options)
    status = Status(StatusCode.UNSET)
    if error is not None:
        values[sc.ERROR_TYPE] = error.error_type
        status = _error_status(error.message, out)
    elif step is not None and step.status == "failed":
        values[sc.ERROR_TYPE] = step.error_type or sc.ERROR_TYPE_OTHER
        status = _error_status(_step_error_message(step), out)

    # Everything the records carry, under letta.*.
    _convert_provider_trace(trace, out, cleaner, llm_config)
    out.put_str(sc.LETTA_RUN_ID, run_id)
    out.put_str(sc.LETTA_STEP_ID, step_id)
    out.put_str(sc.LETTA_AGENT_ID, agent_id)
    out.put_str(sc.GEN_AI_AGENT_ID, agent_id)
    if step is not None:
        _convert_step(step, out, cleaner)
    if metrics is not None:
        _convert_metrics(metrics, out)
    if agent is not None:
        _convert_agent(agent, out, cleaner, description=False)
        out.put_str(sc.GEN_AI_AGENT_NAME, agent.name)
    _put_session(out, run.conversation_id if run else None, agent_id, trace.user_id)

    timing = call_timing(trace, metrics, step, out)
    values[sc.LETTA_DURATION_SOURCE] = timing.duration_source
    values[sc.LETTA_TIMESTAMP_SOURCE] = timing.timestamp_source

    add_content(request, response, req_shape, resp_shape, options, cleaner, out)
    if cleaner.clipped:
        out.warn("content: nesting deeper than the limit was replaced by a marker")

    return ReadableSpan(
        name=f"{operation} {model}" if model else operation,
        context=identity.context,
        parent=identity.parent,
        resource=resource,
        attributes=out.finish(),
        links=identity.links,
        kind=SpanKind.CLIENT,
        status=status,
        start_time=timing.start_ns,
        end_time=timing.end_ns,
        instrumentation_scope=SCOPE,
    )


def _error_status(message: str | None, out: SpanAttributes) -> Status:
    return Status(StatusCode.ERROR, out.fit_text(scrub_url_userinfo(message)) if message else None)


def _step_usage(step: Step) -> Usage:
    return Usage(
        input_tokens=step.prompt_tokens if _non_negative(step.prompt_tokens) else None,
        output_tokens=step.completion_tokens if _non_negative(step.completion_tokens) else None,
        cache_read_tokens=step.cached_input_tokens
        if _non_negative(step.cached_input_tokens)
        else None,
        cache_creation_tokens=step.cache_write_tokens
        if _non_negative(step.cache_write_tokens)
        else None,
        reasoning_tokens=step.reasoning_tokens if _non_negative(step.reasoning_tokens) else None,
    )


def _non_negative(value: int | None) -> bool:
    return isinstance(value, int) and 0 <= value < 2**63


def _step_error_message(step: Step) -> str | None:
    message = step.error_data.get("message") if isinstance(step.error_data, dict) else None
    return message if isinstance(message, str) and message else None


def _convert_provider_trace(
    trace: ProviderTrace, out: SpanAttributes, cleaner: Cleaner, llm_config: dict[str, Any]
) -> None:
    values = out.values
    out.put_str(sc.LETTA_PROVIDER_TRACE_ID, trace.id)
    out.put_str(sc.LETTA_CALL_TYPE, trace.call_type)
    out.put_str(sc.LETTA_SOURCE, trace.source)
    out.put_str(sc.LETTA_ORG_ID, trace.org_id)
    out.put_str(sc.LETTA_USER_ID, trace.user_id)
    out.put_str(sc.LETTA_CREATED_BY_ID, trace.created_by_id)
    out.put_str(sc.LETTA_LAST_UPDATED_BY_ID, trace.last_updated_by_id)
    if trace.agent_tags is not None:
        _put_tags(out, trace.agent_tags, where="agent_tags")
    if trace.latency_ms is not None:
        if -(2**63) <= trace.latency_ms < 2**63:
            values[sc.LETTA_LATENCY_MS] = trace.latency_ms
        else:
            out.warn("latency_ms: outside the int64 range")
    if trace.created_at is not None:
        values[sc.LETTA_PROVIDER_TRACE_CREATED_AT] = trace.created_at.isoformat()
    if trace.updated_at is not None:
        values[sc.LETTA_PROVIDER_TRACE_UPDATED_AT] = trace.updated_at.isoformat()
    billing = trace.billing_context
    if billing is not None:
        out.put_str(f"{sc.LETTA_BILLING_PREFIX}.plan_type", billing.plan_type)
        out.put_str(f"{sc.LETTA_BILLING_PREFIX}.cost_source", billing.cost_source)
        out.put_str(f"{sc.LETTA_BILLING_PREFIX}.customer_id", billing.customer_id)
        out.flatten(sc.LETTA_BILLING_PREFIX, billing.model_extra, cleaner)
    if trace.llm_config is not None and not isinstance(trace.llm_config, dict):
        out.warn("llm_config: expected an object")
    out.flatten(sc.LETTA_LLM_CONFIG_PREFIX, llm_config, cleaner)
    out.flatten(sc.LETTA_COMPACTION_PREFIX, trace.compaction_settings, cleaner)
    out.flatten(sc.LETTA_EXTRA_PREFIX, trace.model_extra, cleaner)


def _convert_step(step: Step, out: SpanAttributes, cleaner: Cleaner) -> None:
    # Step.messages (deprecated, prompt content) and error_data.traceback are deliberately left out.
    values = out.values
    for field, attribute in _STEP_STRINGS:
        text = getattr(step, field)
        if isinstance(text, str) and text:  # out.put_str, inlined: 16 fields per trace
            values[attribute] = text
    for field, attribute, where in _STEP_INTS_WHERE:
        number = getattr(step, field)
        if type(number) is int and 0 <= number <= INT64_MAX:  # out.put_int's common case
            values[attribute] = number
        elif number is not None:
            out.put_int(attribute, number, where=where)
    if step.tags is not None:
        out.put_strs("letta.step.tags", step.tags)
    out.flatten("letta.step.prompt_tokens_details", step.prompt_tokens_details, cleaner)
    out.flatten("letta.step.completion_tokens_details", step.completion_tokens_details, cleaner)
    out.put_str(sc.LETTA_STEP_ERROR_MESSAGE, _step_error_message(step))
    if step.created_at is not None:
        out.values["letta.step.created_at"] = step.created_at.isoformat()


def _convert_metrics(metrics: StepMetrics, out: SpanAttributes) -> None:
    values = out.values
    for field, attribute, where in _METRICS_INTS_WHERE:
        number = getattr(metrics, field)
        if type(number) is int and 0 <= number <= INT64_MAX:  # out.put_int's common case
            values[attribute] = number
        elif number is not None:
            out.put_int(attribute, number, where=where)
    for field, attribute in _METRICS_STRINGS:
        if attribute not in out.values:
            out.put_str(attribute, getattr(metrics, field))


def _convert_agent(
    agent: Agent, out: SpanAttributes, cleaner: Cleaner, *, description: bool
) -> None:
    out.put_str(sc.LETTA_AGENT_NAME, agent.name)
    out.put_str(sc.LETTA_AGENT_TYPE, agent.agent_type)
    out.put_str(sc.LETTA_AGENT_PROJECT_ID, agent.project_id)
    if agent.tags is not None and sc.LETTA_AGENT_TAGS not in out.values:
        _put_tags(out, agent.tags)  # the trace's own tags win
    extra = agent.model_extra or {}
    if description:
        # The invoke_agent span describes the agent: its description and model, when known.
        out.put_str(sc.GEN_AI_AGENT_DESCRIPTION, extra.get("description"))
        config = extra.get("llm_config")
        if isinstance(config, dict):
            endpoint = parse_endpoint(_first_str(config.get("model_endpoint")))
            out.put_str(
                sc.GEN_AI_PROVIDER_NAME,
                provider_name(
                    config.get("model_endpoint_type"),
                    endpoint,
                    config.get("provider_name"),
                    Shape.UNKNOWN,
                ),
            )
            _put_model(out, sc.GEN_AI_REQUEST_MODEL, config.get("model"))


# --- the run span's error --------------------------------------------------------------------
def _run_error_message(run: Run) -> str | None:
    error = run.metadata.get("error") if isinstance(run.metadata, dict) else None
    if isinstance(error, str) and error:
        return error
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else None


def _run_error_type(run: Run, message: str | None, summary: RunSummary) -> str:
    # Letta prefixes run errors with an upper-case code ("RATE_LIMIT_EXCEEDED: ..."): a good type.
    if message:
        code, sep, _ = message.partition(":")
        if sep and code and code.replace("_", "").isalnum() and code.isupper():
            return code
    if run.stop_reason and run.stop_reason != "end_turn":
        return run.stop_reason
    if summary.last_failed and summary.last_error_type:
        return summary.last_error_type
    return sc.ERROR_TYPE_OTHER


def _ended_on_failed_calls(run: Run, summary: RunSummary) -> bool:
    """Calls failed and the run ended on an error (or, with no run record, on the failed call)."""
    if not summary.failed_calls or run.status == "cancelled":
        return False
    if run.stop_reason is not None:
        return run.stop_reason in _ERROR_STOP_REASONS
    return run.status is None and summary.last_failed


# --- sessions, caps, cost --------------------------------------------------------------------
def _put_session(
    out: SpanAttributes, conversation_id: str | None, agent_id: str | None, user_id: str | None
) -> None:
    """One session per Letta conversation, else per agent (its runs share one history)."""
    session = _first_str(conversation_id, agent_id)
    out.put_str(sc.GEN_AI_CONVERSATION_ID, session)
    out.put_str(sc.SESSION_ID, session)
    out.put_str(sc.USER_ID, user_id)


def _capped_name(value: Any) -> str | None:
    if not (isinstance(value, str) and value):
        return None
    return value if len(value) <= MAX_MODEL_CHARS else value[:MAX_MODEL_CHARS] + "..."


def _put_model(out: SpanAttributes, key: str, value: Any) -> str | None:
    """Set a model name attribute, capped at :data:`MAX_MODEL_CHARS`; return what was set."""
    capped = _capped_name(value)
    if capped is None:
        return None
    if capped is not value:
        out.mark_truncated(key)
    out.values[key] = capped
    return capped


def _put_tags(out: SpanAttributes, tags: Any, *, where: str | None = None) -> None:
    if isinstance(tags, list | tuple) and len(tags) > MAX_TAGS:
        tags = tags[:MAX_TAGS]
        out.mark_truncated(sc.LETTA_AGENT_TAGS)
    out.put_strs(sc.LETTA_AGENT_TAGS, tags, where=where)


def _put_cost(
    out: SpanAttributes,
    usage: Usage,
    provider: str | None,
    model: str | None,
    trace: ProviderTrace,
    options: ConvertOptions,
) -> None:
    response_model = out.values.get(sc.GEN_AI_RESPONSE_MODEL)
    cost = price_of(
        models=(response_model if isinstance(response_model, str) else None, model),
        provider=provider,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_creation_tokens=usage.cache_creation_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        when=trace.created_at,
        table=options.prices,
    )
    if cost is None:
        return
    values = out.values
    values[sc.GEN_AI_USAGE_COST] = cost.total
    values[sc.LLM_COST_TOTAL] = cost.total
    values[sc.LLM_COST_PROMPT] = cost.input
    values[sc.LLM_COST_COMPLETION] = cost.output
    values[sc.LETTA_COST_SOURCE] = cost.source


# --- last resort -----------------------------------------------------------------------------
def _fallback_span(trace: ProviderTrace, resource: Resource, exc: Exception) -> ReadableSpan:
    """A minimal span when the conversion itself failed (a bug): ids, times, and the reason."""
    record = trace.id if isinstance(trace.id, str) and trace.id else "anonymous"
    run_id = trace.run_id if isinstance(trace.run_id, str) and trace.run_id else None
    trace_id = trace_id_for_run(run_id) if run_id else trace_id_for_record(record)
    parent = (
        SpanContext(trace_id, run_span_id_for(run_id), is_remote=False, trace_flags=_SAMPLED)
        if run_id
        else None
    )
    try:
        when = datetime_to_ns(trace.created_at) or 0
    except (TypeError, AttributeError, OverflowError):
        when = 0
    attributes: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT,
        sc.LETTA_PROVIDER_TRACE_ID: record,
        sc.LETTA_CONVERT_WARNINGS: (f"internal error converting this trace: {type(exc).__name__}",),
    }
    if run_id:
        attributes[sc.LETTA_RUN_ID] = run_id
    return ReadableSpan(
        name=sc.OP_CHAT,
        context=SpanContext(trace_id, span_id_for(record), is_remote=False, trace_flags=_SAMPLED),
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.CLIENT,
        start_time=when,
        end_time=when,
        instrumentation_scope=SCOPE,
    )


def _fallback_run_span(run: Run, resource: Resource, exc: Exception) -> ReadableSpan:
    """A minimal run span when building it failed (a bug): ids and the reason."""
    run_id = run.id if isinstance(run.id, str) else "anonymous"
    try:
        when = datetime_to_ns(run.created_at) or 0
    except (TypeError, AttributeError, OverflowError):
        when = 0
    return ReadableSpan(
        name=sc.OP_INVOKE_AGENT,
        context=SpanContext(
            trace_id_for_run(run_id), run_span_id_for(run_id), is_remote=False, trace_flags=_SAMPLED
        ),
        resource=resource,
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
            sc.LETTA_RUN_ID: run_id,
            sc.LETTA_CONVERT_WARNINGS: (
                f"internal error converting this run: {type(exc).__name__}",
            ),
        },
        kind=SpanKind.INTERNAL,
        start_time=when,
        end_time=when,
        instrumentation_scope=SCOPE,
    )
