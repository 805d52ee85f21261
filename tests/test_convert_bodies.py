"""Body shapes Letta records (Responses API, Gemini, provider errors) and odd or broken bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from opentelemetry.trace import StatusCode

from exporter.convert import ConvertOptions, TraceContext, build_resource, convert_trace
from exporter.convert._sanitize import Cleaner
from exporter.models import ProviderTrace, Step
from tests.test_convert_properties import assert_valid_span

RESOURCE = build_resource()
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FULL = ConvertOptions(content="full")


DEFAULT = ConvertOptions()


def convert(request=None, response=None, *, options=DEFAULT, context=None, **fields):
    trace = ProviderTrace(
        id="provider_trace-0badc0de-0000-4000-8000-000000000000",
        request_json=request if request is not None else {},
        response_json=response if response is not None else {},
        created_at=T0,
        **fields,
    )
    span = convert_trace(trace, context, options=options, resource=RESOURCE)
    assert_valid_span(span, options)
    return span


def warnings(span) -> tuple[str, ...]:
    return span.attributes.get("letta.convert.warnings", ())


# --- OpenAI Responses API --------------------------------------------------------------------
RESPONSES_REQUEST = {
    "model": "gpt-4.1",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "c1", "output": "rainy"},
    ],
    "max_output_tokens": 256,
    "temperature": 0.2,
    "text": {"format": {"type": "json_schema"}},
    "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "web_search"},
    ],
}
RESPONSES_RESPONSE = {
    "id": "resp_123",
    "object": "response",
    "model": "gpt-4.1-2025-04-14",
    "status": "completed",
    "error": None,
    "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "It rains."}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Rainy, 12°C."}],
        },
    ],
    "usage": {
        "input_tokens": 40,
        "output_tokens": 9,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens_details": {"reasoning_tokens": 4},
    },
}


def test_openai_responses_api():
    span = convert(
        RESPONSES_REQUEST,
        RESPONSES_RESPONSE,
        options=FULL,
        llm_config={"model_endpoint_type": "openai", "model_endpoint": "https://api.openai.com/v1"},
    )
    a = span.attributes
    assert span.name == "chat gpt-4.1"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["openai.api.type"] == "responses"
    assert a["letta.request.shape"] == a["letta.response.shape"] == "openai.responses"
    assert a["gen_ai.response.id"] == "resp_123"
    assert a["gen_ai.response.model"] == "gpt-4.1-2025-04-14"
    assert a["gen_ai.response.finish_reasons"] == ("completed",)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (40, 9)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 8
    assert a["gen_ai.usage.reasoning.output_tokens"] == 4
    assert a["gen_ai.request.max_tokens"] == 256
    assert a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.output.type"] == "json"
    assert a["letta.request.tool_count"] == 2
    assert (a["server.address"], a["server.port"]) == ("api.openai.com", 443)
    assert span.status.status_code is StatusCode.UNSET
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "name": "get_weather",
                    "id": "c1",
                    "arguments": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "response": "rainy", "id": "c1"}],
        },
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "It rains."},
                {"type": "text", "content": "Rainy, 12°C."},
            ],
            "finish_reason": "completed",
        }
    ]
    assert json.loads(a["gen_ai.tool.definitions"]) == [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "web_search", "name": "web_search"},
    ]


def test_responses_api_failure_is_an_error():
    response = {
        **RESPONSES_RESPONSE,
        "status": "failed",
        "output": [],
        "error": {"code": "server_error", "message": "The model failed."},
    }
    span = convert(RESPONSES_REQUEST, response)
    assert span.attributes["error.type"] == "server_error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "The model failed."


# --- Google Gemini ---------------------------------------------------------------------------
GEMINI_REQUEST = {
    "contents": [
        {"role": "user", "parts": [{"text": "Find Lisbon"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "Lisbon"}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "lookup", "response": {"pop": 545000}}}],
        },
    ],
    "systemInstruction": {"parts": [{"text": "You are a geographer."}]},
    "generationConfig": {
        "temperature": 0.5,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": -7,
        "responseMimeType": "application/json",
    },
    "tools": [
        {"functionDeclarations": [{"name": "lookup", "description": "Look up"}, {"name": "other"}]},
        {"googleSearch": {}},
    ],
}
GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"text": "thinking...", "thought": True}, {"text": "Lisbon: 545k"}],
            },
            "finishReason": "STOP",
        },
        {
            "content": {"role": "model", "parts": [{"text": "About 545 thousand"}]},
            "finishReason": "MAX_TOKENS",
        },
    ],
    "usageMetadata": {
        "promptTokenCount": 30,
        "candidatesTokenCount": 12,
        "thoughtsTokenCount": 5,
        "cachedContentTokenCount": 10,
        "totalTokenCount": 47,
    },
    "modelVersion": "gemini-2.5-pro-002",
    "responseId": "resp-g1",
}


def test_google_generate_content():
    span = convert(
        GEMINI_REQUEST,
        GEMINI_RESPONSE,
        options=FULL,
        llm_config={
            "model": "gemini-2.5-pro",
            "model_endpoint_type": "google_ai",
            "model_endpoint": "https://generativelanguage.googleapis.com",
        },
    )
    a = span.attributes
    assert span.name == "generate_content gemini-2.5-pro"
    assert a["gen_ai.operation.name"] == "generate_content"
    assert a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["gen_ai.request.model"] == "gemini-2.5-pro"
    assert a["gen_ai.response.model"] == "gemini-2.5-pro-002"
    assert a["gen_ai.response.id"] == "resp-g1"
    assert a["gen_ai.response.finish_reasons"] == ("STOP", "MAX_TOKENS")
    assert a["gen_ai.usage.input_tokens"] == 30
    assert a["gen_ai.usage.output_tokens"] == 17  # candidates + thoughts
    assert a["gen_ai.usage.reasoning.output_tokens"] == 5
    assert a["gen_ai.usage.cache_read.input_tokens"] == 10
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.top_p"] == 0.9
    assert a["gen_ai.request.top_k"] == 40.0
    assert a["gen_ai.request.max_tokens"] == 64
    assert a["gen_ai.request.stop_sequences"] == ("END",)
    assert a["gen_ai.request.choice.count"] == 2
    assert a["gen_ai.request.seed"] == -7
    assert a["gen_ai.output.type"] == "json"
    assert a["letta.request.tool_count"] == 3
    assert (a["server.address"], a["server.port"]) == ("generativelanguage.googleapis.com", 443)
    assert json.loads(a["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "You are a geographer."}
    ]
    inputs = json.loads(a["gen_ai.input.messages"])
    assert [m["role"] for m in inputs] == ["user", "assistant", "user"]
    assert inputs[1]["parts"] == [
        {"type": "tool_call", "name": "lookup", "arguments": {"q": "Lisbon"}}
    ]
    assert inputs[2]["parts"] == [
        {"type": "tool_call_response", "response": {"pop": 545000}, "id": "lookup"}
    ]
    outputs = json.loads(a["gen_ai.output.messages"])
    assert len(outputs) == 2
    assert outputs[0] == {
        "role": "assistant",
        "parts": [
            {"type": "reasoning", "content": "thinking..."},
            {"type": "text", "content": "Lisbon: 545k"},
        ],
        "finish_reason": "STOP",
    }
    tools = json.loads(a["gen_ai.tool.definitions"])
    assert [t["name"] for t in tools] == ["lookup", "other", "googleSearch"]


def test_vertex_endpoint():
    span = convert(
        GEMINI_REQUEST, GEMINI_RESPONSE, llm_config={"model_endpoint_type": "google_vertex"}
    )
    assert span.attributes["gen_ai.provider.name"] == "gcp.vertex_ai"


# --- providers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "step_provider", "expected"),
    [
        ({"model_endpoint_type": "openai"}, None, "openai"),
        ({"model_endpoint_type": "anthropic"}, None, "anthropic"),
        ({"model_endpoint_type": "azure"}, None, "azure.ai.openai"),
        (
            {
                "model_endpoint_type": "openai",
                "model_endpoint": "https://x.openai.azure.com/openai",
            },
            None,
            "azure.ai.openai",
        ),
        ({"model_endpoint_type": "bedrock"}, None, "aws.bedrock"),
        ({"model_endpoint_type": "groq"}, None, "groq"),
        ({"model_endpoint_type": "mistral"}, None, "mistral_ai"),
        ({"model_endpoint_type": "xai"}, None, "x_ai"),
        ({"model_endpoint_type": "deepseek"}, None, "deepseek"),
        ({"model_endpoint_type": "ollama"}, None, "ollama"),
        (
            {"model_endpoint": "https://bedrock-runtime.us-east-1.amazonaws.com"},
            None,
            "aws.bedrock",
        ),
        ({}, "anthropic", "anthropic"),
        ({}, None, "openai"),  # only the (chat completions) shape is known
    ],
)
def test_provider_names(config, step_provider, expected):
    step = Step(id="s", provider_name=step_provider) if step_provider else None
    span = convert(
        {"model": "m", "messages": []},
        {"choices": []},
        llm_config=config,
        context=TraceContext(step=step),
    )
    assert span.attributes["gen_ai.provider.name"] == expected


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("http://localhost:8283/v1", "localhost", 8283),
        ("https://api.x.ai", "api.x.ai", 443),
        ("http://[::1]:9000", "::1", 9000),
        ("llm.local:7000", "llm.local", 7000),
        ("not a url", None, None),
        ("http://host:99999", None, None),
    ],
)
def test_server_address_and_port(endpoint, address, port):
    a = convert(llm_config={"model_endpoint": endpoint}).attributes
    assert a.get("server.address") == address
    assert a.get("server.port") == port


# --- request parameters ----------------------------------------------------------------------
def test_request_parameters_openai():
    request = {
        "model": "gpt-4o",
        "messages": [],
        "temperature": 0,
        "top_p": 1,
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "stop": "END",
        "seed": 42,
        "n": 3,
        "stream": True,
        "service_tier": "flex",
        "response_format": {"type": "json_object"},
    }
    a = convert(request, {"choices": []}, llm_config={"model_endpoint_type": "openai"}).attributes
    assert a["gen_ai.request.temperature"] == 0.0
    assert isinstance(a["gen_ai.request.temperature"], float)
    assert a["gen_ai.request.top_p"] == 1.0
    assert a["gen_ai.request.max_tokens"] == 20  # max_completion_tokens wins
    assert a["gen_ai.request.frequency_penalty"] == 0.5
    assert a["gen_ai.request.presence_penalty"] == -0.5
    assert a["gen_ai.request.stop_sequences"] == ("END",)
    assert a["gen_ai.request.seed"] == 42
    assert a["gen_ai.request.choice.count"] == 3
    assert a["gen_ai.request.stream"] is True
    assert a["letta.request.stream.source"] == "request_json"
    assert a["openai.request.service_tier"] == "flex"
    assert a["gen_ai.output.type"] == "json"


def test_choice_count_of_one_is_not_set():
    assert "gen_ai.request.choice.count" not in convert({"messages": [], "n": 1}).attributes


def test_anthropic_request_parameters():
    request = {
        "model": "claude",
        "system": "s",
        "messages": [],
        "top_k": 5,
        "stop_sequences": ["a", "b"],
        "max_tokens": 100,
    }
    a = convert(request, {"type": "message", "content": []}).attributes
    assert a["gen_ai.request.top_k"] == 5.0
    assert a["gen_ai.request.stop_sequences"] == ("a", "b")
    assert a["letta.request.shape"] == "anthropic.messages"
    assert a["gen_ai.provider.name"] == "anthropic"


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "error_type", "message"),
    [
        ({"error": "boom", "error_type": "APIConnectionError"}, "APIConnectionError", "boom"),
        (
            {"error": {"message": "slow down", "type": "rate_limit_error"}},
            "rate_limit_error",
            "slow down",
        ),
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "overloaded_error",
            "Overloaded",
        ),
        ({"error": {"code": 503}}, "503", None),
        ({"error": ["weird"]}, "_OTHER", None),
        ({"error": "no type"}, "_OTHER", "no type"),
    ],
)
def test_error_bodies(response, error_type, message):
    span = convert({"model": "m", "messages": []}, response)
    assert span.attributes["error.type"] == error_type
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == message
    assert span.attributes["letta.response.shape"] == "error"


def test_failed_step_without_error_body_is_an_error():
    step = Step(
        id="s",
        status="failed",
        error_type="LLMTimeoutError",
        error_data={"message": "timed out", "traceback": "Traceback..."},
    )
    span = convert({"model": "m"}, {"foo": 1}, context=TraceContext(step=step))
    assert span.attributes["error.type"] == "LLMTimeoutError"
    assert span.status.description == "timed out"
    assert span.attributes["letta.step.error.message"] == "timed out"
    assert "Traceback..." not in json.dumps(dict(span.attributes))


# --- usage fallback and odd usage ------------------------------------------------------------
def test_unknown_shape_takes_usage_from_the_step_and_says_so():
    step = Step(
        id="s", prompt_tokens=100, completion_tokens=7, cached_input_tokens=50, reasoning_tokens=2
    )
    a = convert({"foo": "bar"}, {"something": "else"}, context=TraceContext(step=step)).attributes
    assert a["letta.response.shape"] == "unknown"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (100, 7)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 50
    assert a["gen_ai.usage.reasoning.output_tokens"] == 2
    assert a["letta.usage.source"] == "step"


def test_error_calls_do_not_borrow_step_usage():
    step = Step(id="s", prompt_tokens=0, completion_tokens=0)
    a = convert({}, {"error": "x", "error_type": "E"}, context=TraceContext(step=step)).attributes
    assert "gen_ai.usage.input_tokens" not in a


@pytest.mark.parametrize(
    ("usage", "expected_in", "expected_out", "warned"),
    [
        ({"prompt_tokens": "12", "completion_tokens": 3.0}, 12, 3, False),
        ({"prompt_tokens": "abc", "completion_tokens": -4}, None, None, True),
        ({"prompt_tokens": True, "completion_tokens": 2**70}, None, None, True),
        ({"prompt_tokens": [1], "completion_tokens": {"a": 1}}, None, None, True),
        ({"prompt_tokens": 5, "prompt_tokens_details": "cached"}, 5, None, True),
        ({"input_tokens": 10, "cache_read_input_tokens": "x", "output_tokens": 1}, 10, 1, True),
    ],
)
def test_odd_usage_values(usage, expected_in, expected_out, warned):
    span = convert({"model": "m", "messages": []}, {"choices": [], "usage": usage})
    a = span.attributes
    assert a.get("gen_ai.usage.input_tokens") == expected_in
    assert a.get("gen_ai.usage.output_tokens") == expected_out
    assert bool(warnings(span)) is warned
    for warning in warnings(span):
        assert "abc" not in warning  # warnings name the field and type, never the value


def test_lists_where_objects_are_expected():
    span = convert(
        {"messages": "hi", "tools": {"a": 1}, "temperature": "hot", "stop": [1, 2]},
        {"choices": {"x": 1}, "usage": [1, 2], "model": 5},
        options=FULL,
    )
    text = " | ".join(warnings(span))
    for path in (
        "request_json.tools",
        "request_json.temperature",
        "request_json.stop",
        "response_json.usage",
        "response_json.model",
        "request_json.messages",
    ):
        assert path in text, path


def test_non_dict_bodies_built_without_validation():
    trace = ProviderTrace.model_construct(
        request_json=["not", "a", "dict"], response_json="nope", created_at=T0
    )
    span = convert_trace(trace, resource=RESOURCE)
    assert any("request_json" in w for w in span.attributes["letta.convert.warnings"])
    assert span.end_time > 0


# --- size, depth, characters -----------------------------------------------------------------
def deep(levels: int) -> dict:
    value: object = "bottom"
    for i in range(levels):
        value = {"k": [value]} if i % 2 else {"k": value}
    return value  # type: ignore[return-value]


@pytest.mark.parametrize("mode", ["none", "full", "raw"])
def test_thousand_levels_of_nesting(mode):
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": [deep(1000)]}],
        "weird": deep(1000),
    }
    response = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "function": {"name": "f", "arguments": json.dumps(deep(300))}}
                    ],
                }
            }
        ],
        "deep": deep(1000),
    }
    span = convert(
        request,
        response,
        options=ConvertOptions(content=mode),
        llm_config={"deep": deep(1000)},
        nested_extra=deep(1000),
    )
    if mode != "none":
        assert any("nesting" in w for w in warnings(span))
    json.loads(
        span.attributes["letta.llm_config.deep.k"]
    )  # a list holding objects: one JSON string
    json.loads(span.attributes["letta.extra.nested_extra.k"])


def test_huge_body_with_content_off_is_cheap(monkeypatch):
    huge = "x" * 5_000_000
    request = {"model": "m", "messages": [{"role": "user", "content": huge}] * 20}
    response = {"choices": [{"message": {"content": huge}, "finish_reason": "stop"}]}
    # The work, counted in characters cleaned or serialised (not in seconds).
    handled = [0]
    real_dumps, real_text = json.dumps, Cleaner.text

    def counting_dumps(value, *args, **kwargs):
        text = real_dumps(value, *args, **kwargs)
        handled[0] += len(text)
        return text

    def counting_text(self, value):
        handled[0] += len(value)
        return real_text(self, value)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    monkeypatch.setattr(Cleaner, "text", counting_text)
    span = convert(request, response)
    assert handled[0] < 10_000  # nothing walked or serialised: 105 MB of content untouched
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    full = convert(request, response, options=FULL)
    assert handled[0] > 5_000_000  # the count does see content when content is on
    monkeypatch.undo()
    assert len(full.attributes["gen_ai.input.messages"].encode()) <= 16384


def test_non_ascii_and_lone_surrogates():
    text = "Olá, 世界 🌍 \ud800 end"
    span = convert(
        {"model": "modèle-\udfff", "messages": [{"role": "user", "content": text}]},
        {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "model": "🤖"},
        options=FULL,
        llm_config={"name": "ñ\ud83d"},
    )
    a = span.attributes
    assert a["gen_ai.response.model"] == "🤖"
    assert "世界 🌍" in json.loads(a["gen_ai.input.messages"])[0]["parts"][0]["content"]
    assert a["gen_ai.request.model"] == "modèle-\ufffd"


def test_minimal_trace():
    span = convert_trace(ProviderTrace(request_json={}, response_json={}), resource=RESOURCE)
    assert span.name == "chat"
    assert span.start_time == span.end_time == 0
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["letta.response.shape"] == "unknown"


def test_unknown_extra_fields_land_under_letta_extra():
    span = convert(
        cost_usd=0.0021, region="eu-west-1", flags=["a", "b"], mixed=[1, "a"], meta={"x": {"y": 1}}
    )
    a = span.attributes
    assert a["letta.extra.cost_usd"] == 0.0021
    assert a["letta.extra.region"] == "eu-west-1"
    assert a["letta.extra.flags"] == ("a", "b")
    assert json.loads(a["letta.extra.mixed"]) == [1, "a"]
    assert a["letta.extra.meta.x.y"] == 1


def test_int64_overflow_and_nan_in_config():
    a = convert(llm_config={"big": 2**80, "nan": float("nan"), "ints": [1, 2**70]}).attributes
    assert a["letta.llm_config.big"] == str(2**80)
    assert a["letta.llm_config.nan"] == "nan"
    assert json.loads(a["letta.llm_config.ints"]) == [1, 2**70]


@pytest.mark.parametrize("role", [{"a": 1}, ["user"], 5])
def test_a_message_role_of_another_type_keeps_the_content(role: object) -> None:
    trace = ProviderTrace(
        request_json={"model": "gpt-4o-mini", "messages": [{"role": role, "content": "hi"}]},
        response_json={"id": "x"},
    )
    span = convert_trace(trace, options=ConvertOptions(content="full"), resource=build_resource())
    messages = json.loads(str(span.attributes["gen_ai.input.messages"]))
    assert messages == [{"role": "unknown", "parts": [{"type": "text", "content": "hi"}]}]
