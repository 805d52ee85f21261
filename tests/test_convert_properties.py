"""Property tests: any schema-valid ProviderTrace converts to valid OTel data, deterministically."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.convert import ConvertOptions, TraceContext, build_resource, convert_trace
from exporter.models import BillingContext, ProviderTrace, Step, StepMetrics

RESOURCE = build_resource()
INT64 = (-(2**63), 2**63 - 1)
MARKER = "QQ-PLANTED-MARKER-QQ"
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- generators ------------------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
token_values = st.one_of(
    st.integers(min_value=-5, max_value=2**64),
    st.text(max_size=5),
    st.floats(),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


def _usage(keys: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={k: token_values for k in keys})


usages = st.one_of(
    _usage(["prompt_tokens", "completion_tokens", "total_tokens"]),
    _usage(
        ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
    ),
    _usage(["promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount"]),
    json_values,
)
shaped_responses = st.one_of(
    st.fixed_dictionaries(
        {
            "choices": st.lists(
                json_objects | st.fixed_dictionaries({"finish_reason": json_values}), max_size=3
            )
        },
        optional={
            "id": json_values,
            "model": json_values,
            "usage": usages,
            "object": st.just("chat.completion"),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("message"), "content": st.lists(json_values, max_size=3)},
        optional={"stop_reason": json_values, "usage": usages, "model": json_values},
    ),
    st.fixed_dictionaries(
        {
            "content": st.fixed_dictionaries(
                {}, optional={"tool_call": json_values, "content": json_values}
            )
        },
        optional={"usage": usages, "type": st.just("message")},
    ),
    st.fixed_dictionaries(
        {"object": st.just("response"), "output": json_values},
        optional={"status": json_values, "usage": usages},
    ),
    st.fixed_dictionaries({"candidates": json_values}, optional={"usageMetadata": usages}),
    st.fixed_dictionaries({"error": json_values}, optional={"error_type": json_values}),
    json_objects,
)
shaped_requests = st.one_of(
    st.fixed_dictionaries(
        {"messages": json_values},
        optional={
            "model": json_values,
            "temperature": json_values,
            "max_tokens": json_values,
            "stop": json_values,
            "tools": json_values,
            "n": json_values,
            "seed": json_values,
            "system": json_values,
            "stream": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"input": json_values}, optional={"instructions": json_values, "tools": json_values}
    ),
    st.fixed_dictionaries(
        {"contents": json_values}, optional={"generationConfig": json_values, "tools": json_values}
    ),
    json_objects,
)
datetimes = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.just(timezone(timedelta(hours=-5)))),
)
ids = st.one_of(st.none(), st.text(max_size=20), st.uuids().map(lambda u: f"run-{u}"))
ints = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))


@st.composite
def traces(draw, request=shaped_requests, response=shaped_responses):
    extra = draw(
        st.dictionaries(
            st.sampled_from(["newer_field", "secret", "nested"]), json_values, max_size=2
        )
    )
    return ProviderTrace(
        id=draw(st.one_of(st.none(), st.uuids().map(lambda u: f"provider_trace-{u}"))),
        request_json=draw(request),
        response_json=draw(response),
        step_id=draw(ids),
        agent_id=draw(ids),
        agent_tags=draw(st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=3))),
        call_type=draw(
            st.one_of(
                st.none(), st.sampled_from(["agent_step", "summarization"]), st.text(max_size=5)
            )
        ),
        run_id=draw(ids),
        source=draw(st.one_of(st.none(), st.text(max_size=8))),
        org_id=draw(ids),
        user_id=draw(ids),
        compaction_settings=draw(st.one_of(st.none(), json_objects)),
        llm_config=draw(st.one_of(st.none(), json_objects)),
        billing_context=draw(
            st.one_of(
                st.none(),
                st.builds(BillingContext, plan_type=st.one_of(st.none(), st.text(max_size=5))),
            )
        ),
        latency_ms=draw(ints),
        created_at=draw(datetimes),
        updated_at=draw(datetimes),
        **extra,
    )


contexts = st.builds(
    TraceContext,
    step=st.one_of(
        st.none(),
        st.builds(
            Step,
            id=st.text(min_size=1, max_size=10),
            run_id=ids,
            status=st.sampled_from([None, "success", "failed"]),
            prompt_tokens=ints,
            completion_tokens=ints,
            trace_id=st.one_of(
                st.none(),
                st.text(max_size=32),
                st.integers(0, 2**128 - 1).map(lambda i: f"{i:032x}"),
            ),
            model_endpoint=st.one_of(
                st.none(), st.text(max_size=20), st.just("https://u:p@h.example:99/v1")
            ),
            error_data=st.one_of(st.none(), json_objects),
        ),
    ),
    metrics=st.one_of(
        st.none(),
        st.builds(
            StepMetrics,
            id=st.text(min_size=1, max_size=5),
            llm_request_start_ns=ints,
            llm_request_ns=ints,
        ),
    ),
)
options = st.builds(
    ConvertOptions,
    content=st.sampled_from(["none", "full", "raw"]),
    content_max_bytes=st.integers(min_value=0, max_value=4096),
    redact_patterns=st.sampled_from([(), (r"\d{3}",), ("[",)]),
    join_letta_traces=st.booleans(),
)


# --- checks ----------------------------------------------------------------------------------
def assert_valid_value(key, value):
    assert value is not None, key
    if isinstance(value, str):
        value.encode("utf-8")  # exportable (no lone surrogates)
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        assert INT64[0] <= value <= INT64[1], key
        return
    if isinstance(value, float):
        return
    assert isinstance(value, tuple), (key, type(value))
    kinds = {type(item) for item in value}
    assert len(kinds) <= 1, (key, kinds)
    for item in value:
        assert not isinstance(item, tuple | list | dict)
        assert_valid_value(key, item)


def assert_valid_span(span, opts: ConvertOptions):
    assert isinstance(span.start_time, int)
    assert isinstance(span.end_time, int)
    assert 0 <= span.start_time <= span.end_time <= INT64[1]
    assert span.context.trace_id != 0
    assert span.context.span_id != 0
    assert 0 < span.context.trace_id < 2**128
    assert 0 < span.context.span_id < 2**64
    limit = max(opts.content_max_bytes, 64)
    for key, value in span.attributes.items():
        assert isinstance(key, str)
        assert key
        assert_valid_value(key, value)
        if isinstance(value, str):
            assert len(value.encode("utf-8")) <= limit, key
    warnings = span.attributes.get("letta.convert.warnings", ())
    assert not any("internal error" in w for w in warnings), warnings
    for key in (
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "letta.request.json",
        "letta.response.json",
    ):
        if key in span.attributes:
            json.loads(span.attributes[key])
    if span.status.description is not None:
        span.status.description.encode("utf-8")


@SETTINGS
@given(trace=traces(), context=contexts, opts=options)
def test_any_trace_converts_to_valid_span(trace, context, opts):
    span = convert_trace(trace, context, options=opts, resource=RESOURCE)
    assert_valid_span(span, opts)
    again = convert_trace(trace, context, options=opts, resource=RESOURCE)
    assert again.context == span.context
    assert again.parent == span.parent
    assert dict(again.attributes) == dict(span.attributes)
    assert (again.start_time, again.end_time) == (span.start_time, span.end_time)


# --- content=none never leaks text planted where content lives --------------------------------
planted = st.text(max_size=6).map(lambda s: f"{s}{MARKER}{s}")
planted_args = st.one_of(
    planted, st.dictionaries(st.text(max_size=4), planted, min_size=1, max_size=2).map(json.dumps)
)


@st.composite
def content_traces(draw):
    text = draw(planted)
    args = draw(planted_args)
    shape = draw(st.sampled_from(["openai", "anthropic", "responses", "google", "stream"]))
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "description": text, "parameters": {"d": text}},
        }
    ]
    if shape == "openai":
        request = {
            "model": "m",
            "messages": [
                {"role": "system", "content": text},
                {"role": "user", "content": [{"type": "text", "text": text}]},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": args}}],
                },
                {"role": "tool", "tool_call_id": "c", "content": text},
            ],
            "tools": tools,
        }
        response = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [{"id": "d", "function": {"name": "f", "arguments": args}}],
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        }
    elif shape == "anthropic":
        request = {
            "model": "m",
            "system": [{"type": "text", "text": text}],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": text}],
                }
            ],
            "tools": [{"name": "f", "description": text, "input_schema": {"x": text}}],
        }
        response = {
            "type": "message",
            "content": [
                {"type": "thinking", "thinking": text},
                {"type": "tool_use", "id": "t", "name": "f", "input": {"a": text}},
            ],
            "stop_reason": "tool_use",
        }
    elif shape == "responses":
        request = {
            "model": "m",
            "instructions": text,
            "input": [
                {"role": "user", "content": text},
                {"type": "function_call_output", "call_id": "c", "output": text},
            ],
        }
        response = {
            "object": "response",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": text}]},
                {"type": "function_call", "name": "f", "arguments": args},
            ],
        }
    elif shape == "google":
        request = {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "systemInstruction": {"parts": [{"text": text}]},
        }
        response = {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"text": text},
                            {"functionCall": {"name": "f", "args": {"q": text}}},
                        ]
                    }
                }
            ]
        }
    else:
        request = {"model": "m", "messages": [{"role": "user", "content": text}], "tools": tools}
        response = {
            "content": {
                "tool_call": json.dumps({"id": "x", "function": {"name": "f", "arguments": args}}),
                "content": [json.dumps({"type": "text", "text": text})],
                "reasoning": [json.dumps({"type": "reasoning", "reasoning": text})],
            },
            "type": "message",
        }
    return ProviderTrace(
        id="provider_trace-00000000-0000-4000-8000-000000000001",
        request_json=request,
        response_json=response,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


@SETTINGS
@given(trace=content_traces())
def test_content_none_never_leaks_content(trace):
    span = convert_trace(trace, resource=RESOURCE)
    for key, value in span.attributes.items():
        items = value if isinstance(value, tuple) else (value,)
        assert not any(isinstance(v, str) and MARKER in v for v in items), key
    assert span.status.description is None or MARKER not in span.status.description
    full = convert_trace(trace, options=ConvertOptions(content="full"), resource=RESOURCE)
    assert any(isinstance(v, str) and MARKER in v for v in full.attributes.values())


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=3000),
    trace=content_traces(),
    mode=st.sampled_from(["full", "raw"]),
)
def test_truncated_content_stays_valid_json(limit, trace, mode):
    big = ProviderTrace(
        id=trace.id,
        request_json={**trace.request_json, "pad": ["é" * 500, {"k": "x" * 2000}] * 3},
        response_json=trace.response_json,
        created_at=trace.created_at,
    )
    opts = ConvertOptions(content=mode, content_max_bytes=limit)
    span = convert_trace(big, options=opts, resource=RESOURCE)
    assert_valid_span(span, opts)
    for key in ("gen_ai.system_instructions", "gen_ai.tool.definitions"):
        if key in span.attributes:
            assert isinstance(json.loads(span.attributes[key]), list)
    assert math.isfinite(span.end_time)
