"""Content policies (none / full / raw), the size limit, redaction and credential removal."""

from __future__ import annotations

import json

import pytest

from exporter.convert import ConvertOptions, TraceContext, build_resource, convert_trace
from exporter.models import ProviderTrace, Step, parse_trace_body
from tests.conftest import LETTA

RESOURCE = build_resource()
TRACES = LETTA / "traces"
CONTENT_KEYS = (
    "gen_ai.system_instructions",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.definitions",
)
FULL = ConvertOptions(content="full")
RAW = ConvertOptions(content="raw")


def load(name: str) -> ProviderTrace:
    trace = parse_trace_body((TRACES / name).read_bytes())
    assert trace is not None
    return trace


def all_strings(span) -> list[str]:
    out = [span.status.description or "", span.name]
    for value in span.attributes.values():
        out.extend(
            v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, str)
        )
    return out


def test_none_is_the_default_and_puts_no_content_anywhere():
    trace = load("nonstreaming_tool_call_trace.json")
    span = convert_trace(trace, resource=RESOURCE)
    text = "\n".join(all_strings(span))
    for key in (*CONTENT_KEYS, "letta.request.json", "letta.response.json"):
        assert key not in span.attributes
    for secret in (
        "Hi! Can you help me plan a weekend?",
        "base_instructions",
        "drinks",
        "conversation_search",
        "Search prior conversation history",
    ):
        assert secret not in text


# --- full ------------------------------------------------------------------------------------
def test_full_openai_chat():
    a = convert_trace(load("nonstreaming_trace.json"), options=FULL, resource=RESOURCE).attributes
    inputs = json.loads(a["gen_ai.input.messages"])
    assert [m["role"] for m in inputs] == ["system", "user"]
    assert inputs[0]["parts"][0]["type"] == "text"
    assert inputs[0]["parts"][0]["content"].startswith("<base_instructions>")
    assert inputs[1]["parts"] == [
        {"type": "text", "content": "Hi! Can you help me plan a weekend?"}
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "text",
                    "content": "That is an interesting question. The short version is that it "
                    "depends on the context window.",
                }
            ],
            "finish_reason": "stop",
        }
    ]
    tools = json.loads(a["gen_ai.tool.definitions"])
    assert [t["name"] for t in tools] == ["conversation_search", "memory_insert", "memory_replace"]
    assert all(t["type"] == "function" and t["parameters"]["type"] == "object" for t in tools)
    assert "gen_ai.system_instructions" not in a  # OpenAI keeps the system prompt in the history
    assert "letta.content.truncated" not in a


def test_full_openai_tool_call_output_parses_arguments():
    a = convert_trace(
        load("nonstreaming_tool_call_trace.json"), options=FULL, resource=RESOURCE
    ).attributes
    (message,) = json.loads(a["gen_ai.output.messages"])
    assert message["finish_reason"] == "tool_calls"
    assert message["parts"] == [
        {
            "type": "tool_call",
            "name": "conversation_search",
            "id": "call_cc004b3bd711442db59bf322",
            "arguments": {"query": "drinks", "limit": 5},
        }
    ]


def test_full_tool_round_trip_in_history():
    a = convert_trace(
        load("error_trace_openai_InternalServerError.json"), options=FULL, resource=RESOURCE
    ).attributes
    inputs = json.loads(a["gen_ai.input.messages"])
    calls = [p for m in inputs for p in m["parts"] if p["type"] == "tool_call"]
    results = [
        (m["role"], p) for m in inputs for p in m["parts"] if p["type"] == "tool_call_response"
    ]
    assert calls[0]["id"] == "call_cc004b3bd711442db59bf322"
    assert calls[0]["arguments"] == {"query": "drinks", "limit": 5}
    assert results[0][0] == "tool"
    assert results[0][1]["id"] == "call_cc004b3bd711442db59bf322"
    assert "gen_ai.output.messages" not in a  # the call failed: no output


def test_full_anthropic_system_and_tool_use():
    a = convert_trace(
        load("anthropic_tool_use_trace.json"), options=FULL, resource=RESOURCE
    ).attributes
    system = json.loads(a["gen_ai.system_instructions"])
    assert len(system) == 1
    assert system[0]["type"] == "text"
    assert system[0]["content"].startswith("<base_instructions>")
    inputs = json.loads(a["gen_ai.input.messages"])
    assert [m["role"] for m in inputs] == ["user", "assistant", "user"]
    assert inputs[2]["parts"] == [
        {"type": "text", "content": "Remember I like hiking. TOOL:memory_insert"}
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "name": "memory_insert",
                    "id": "toolu_01197cb9821ee14799b76628",
                    "arguments": {"label": "human", "new_string": "Prefers green tea."},
                }
            ],
            "finish_reason": "tool_use",
        }
    ]
    tools = json.loads(a["gen_ai.tool.definitions"])
    assert tools[0]["type"] == "function"
    assert "parameters" in tools[0]


def test_full_letta_streaming_anthropic():
    a = convert_trace(
        load("streaming_anthropic_trace.json"), options=FULL, resource=RESOURCE
    ).attributes
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Noted. I will remember that for later."}],
        }
    ]
    inputs = json.loads(a["gen_ai.input.messages"])
    kinds = [p["type"] for m in inputs for p in m["parts"]]
    assert "tool_call" in kinds
    assert "tool_call_response" in kinds
    response = next(p for m in inputs for p in m["parts"] if p["type"] == "tool_call_response")
    assert response["id"] == "toolu_01197cb9821ee14799b7662"


def test_full_letta_streaming_with_tool_call_and_reasoning_list():
    a = convert_trace(
        load("streaming_memgpt_v2_trace.json"), options=FULL, resource=RESOURCE
    ).attributes
    (message,) = json.loads(a["gen_ai.output.messages"])
    assert message["parts"][0] == {
        "type": "text",
        "content": "The user asked me to use a tool; I will call it with sensible arguments.",
    }
    call = message["parts"][1]
    assert call["type"] == "tool_call"
    assert call["name"] == "send_message"
    assert call["id"] == "call_53d4a3c7cdc240a9a765cfab"
    assert call["arguments"]["message"] == "Thanks for the update! Anything else?"


def test_full_anthropic_thinking_and_redacted_blocks():
    trace = ProviderTrace(
        request_json={"model": "claude", "messages": [{"role": "user", "content": "q"}]},
        response_json={
            "type": "message",
            "role": "assistant",
            "stop_reason": "end_turn",
            "content": [
                {"type": "thinking", "thinking": "let me think", "signature": "sig"},
                {"type": "redacted_thinking", "data": "ENCRYPTED"},
                {"type": "text", "text": "answer"},
            ],
        },
    )
    a = convert_trace(trace, options=FULL, resource=RESOURCE).attributes
    (message,) = json.loads(a["gen_ai.output.messages"])
    assert message["parts"] == [
        {"type": "reasoning", "content": "let me think"},
        {"type": "redacted_thinking"},
        {"type": "text", "content": "answer"},
    ]
    assert "ENCRYPTED" not in a["gen_ai.output.messages"]


# --- raw -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "nonstreaming_trace.json",
        "anthropic_tool_use_trace.json",
        "streaming_memgpt_v2_trace.json",
        "error_trace_anthropic_InternalServerError.json",
    ],
)
def test_raw_bodies_verbatim(name):
    trace = load(name)
    span = convert_trace(
        trace, options=ConvertOptions(content="raw", content_max_bytes=1 << 20), resource=RESOURCE
    )
    assert json.loads(span.attributes["letta.request.json"]) == trace.request_json
    assert json.loads(span.attributes["letta.response.json"]) == trace.response_json
    for key in CONTENT_KEYS:
        assert key not in span.attributes


# --- size limit ------------------------------------------------------------------------------
FIXTURES = sorted(p.name for p in TRACES.glob("*.json") if "database" not in p.name)


@pytest.mark.parametrize("limit", [0, 64, 300, 2000, 8000])
@pytest.mark.parametrize("mode", ["full", "raw"])
def test_truncation_keeps_json_valid_and_within_limit(limit, mode):
    effective = max(limit, 64)
    for name in FIXTURES:
        span = convert_trace(
            load(name),
            options=ConvertOptions(content=mode, content_max_bytes=limit),
            resource=RESOURCE,
        )
        truncated = span.attributes.get("letta.content.truncated", ())
        for key in (*CONTENT_KEYS, "letta.request.json", "letta.response.json"):
            if key not in span.attributes:
                continue
            text = span.attributes[key]
            assert len(text.encode("utf-8")) <= effective, (name, key)
            parsed = json.loads(text)
            original_size = None if key not in truncated else "cut"
            if mode == "full":
                assert isinstance(parsed, list)
                for message in (
                    parsed if key in ("gen_ai.input.messages", "gen_ai.output.messages") else ()
                ):
                    assert "role" in message
                    assert isinstance(message["parts"], list)
            assert original_size in (None, "cut")
        if mode == "raw" and limit < 8000:
            assert "letta.request.json" in truncated


def test_truncation_shortens_strings_first_and_marks_them():
    trace = load("nonstreaming_trace.json")
    a = convert_trace(
        trace, options=ConvertOptions(content="full", content_max_bytes=2000), resource=RESOURCE
    ).attributes
    assert "gen_ai.input.messages" in a["letta.content.truncated"]
    inputs = json.loads(a["gen_ai.input.messages"])
    assert [m["role"] for m in inputs] == ["system", "user"]  # messages kept, text shortened
    assert inputs[0]["parts"][0]["content"].endswith("...[truncated]")
    assert "gen_ai.output.messages" not in a["letta.content.truncated"]


def test_truncation_counts_utf8_bytes():
    text = "Grüße aus Porto 😀 " * 400
    trace = ProviderTrace(
        request_json={"messages": [{"role": "user", "content": text}]},
        response_json={"choices": [{"message": {"role": "assistant", "content": text}}]},
    )
    for limit in (100, 1000, 5000):
        a = convert_trace(
            trace,
            options=ConvertOptions(content="full", content_max_bytes=limit),
            resource=RESOURCE,
        ).attributes
        for key in ("gen_ai.input.messages", "gen_ai.output.messages"):
            assert len(a[key].encode("utf-8")) <= limit
            json.loads(a[key])


def test_plain_string_attributes_obey_the_limit():
    long_model = "m" * 500
    trace = ProviderTrace(
        request_json={"model": long_model},
        response_json={"error": "boom " * 200, "error_type": "BoomError"},
        llm_config={"note": "é" * 400},
    )
    span = convert_trace(trace, options=ConvertOptions(content_max_bytes=100), resource=RESOURCE)
    a = span.attributes
    assert len(a["gen_ai.request.model"].encode()) <= 100
    assert a["gen_ai.request.model"].endswith("...[truncated]")
    assert len(a["letta.llm_config.note"].encode()) <= 100
    a["letta.llm_config.note"].encode("utf-8")
    assert set(a["letta.content.truncated"]) >= {"gen_ai.request.model", "letta.llm_config.note"}
    assert len(span.status.description.encode()) <= 100


# --- redaction -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "full", "raw"])
def test_redaction_patterns_apply_everywhere(mode):
    trace = load("nonstreaming_trace.json")
    opts = ConvertOptions(content=mode, redact_patterns=(r"Porto", r"agent-[0-9a-f-]{36}"))
    span = convert_trace(trace, options=opts, resource=RESOURCE)
    text = "\n".join(all_strings(span))
    assert "Porto" not in text
    assert "agent-d027b87e" not in text
    if mode != "none":
        assert "[REDACTED]" in text


def test_redaction_happens_before_truncation():
    secret = "sk-" + "A1b2C3d4E5" * 3  # the pattern needs all 30 characters
    body = {"messages": [{"role": "user", "content": "x" * 100 + secret + "y" * 4000}]}
    trace = ProviderTrace(request_json=body, response_json={})
    for limit in (120, 150, 200, 400):
        for mode in ("full", "raw"):
            opts = ConvertOptions(
                content=mode, content_max_bytes=limit, redact_patterns=(r"sk-[A-Za-z0-9]{30}",)
            )
            text = "\n".join(all_strings(convert_trace(trace, options=opts, resource=RESOURCE)))
            assert "sk-A1b2" not in text, (limit, mode)


def test_invalid_redaction_pattern_is_skipped_not_raised():
    span = convert_trace(
        load("nonstreaming_trace.json"),
        options=ConvertOptions(content="full", redact_patterns=("[unclosed", "Porto")),
        resource=RESOURCE,
    )
    assert "Porto" not in span.attributes["gen_ai.input.messages"]


# --- credentials -----------------------------------------------------------------------------
SECRETS = [f"SECRET-VALUE-{i}" for i in range(12)]


def credential_trace() -> ProviderTrace:
    return ProviderTrace(
        id="provider_trace-00000000-0000-4000-8000-00000000c0de",
        request_json={
            "model": "gpt-4o",
            "max_tokens": 5,
            "api_key": SECRETS[0],
            "extra_headers": {"Authorization": f"Bearer {SECRETS[1]}", "X-API-KEY": SECRETS[2]},
            "nested": [{"Password": SECRETS[3]}],
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "function": {
                                "name": "login",
                                "arguments": json.dumps({"client_secret": SECRETS[4]}),
                            },
                        }
                    ],
                }
            ],
        },
        response_json={"choices": [], "usage": {"prompt_tokens": 3}, "access_token": SECRETS[5]},
        llm_config={
            "model": "gpt-4o",
            "api_key": SECRETS[6],
            "auth": {"token": SECRETS[7]},
            "model_endpoint": f"https://user:{SECRETS[8]}@llm.example.com/v1",
            "headers": [{"x-api-key": SECRETS[9]}],
            "budget_tokens": 7,
        },
        compaction_settings={"openai_api_key": SECRETS[10]},
        secret=SECRETS[11],  # an unknown extra field
    )


@pytest.mark.parametrize("mode", ["none", "full", "raw"])
def test_credential_keys_never_exported(mode):
    span = convert_trace(
        credential_trace(), options=ConvertOptions(content=mode), resource=RESOURCE
    )
    text = "\n".join(all_strings(span))
    for secret in SECRETS:
        assert secret not in text, (mode, secret)
    a = span.attributes
    assert a["letta.llm_config.api_key"] == "[REDACTED]"
    assert a["letta.llm_config.auth"] == "[REDACTED]"
    assert a["letta.compaction_settings.openai_api_key"] == "[REDACTED]"
    assert a["letta.extra.secret"] == "[REDACTED]"
    assert a["letta.llm_config.budget_tokens"] == 7  # token *counts* are not credentials
    assert a["gen_ai.request.max_tokens"] == 5
    assert a["server.address"] == "llm.example.com"
    assert a["letta.llm_config.model_endpoint"] == "https://[REDACTED]@llm.example.com/v1"
    if mode == "raw":
        body = json.loads(a["letta.request.json"])
        assert body["api_key"] == "[REDACTED]"
        assert body["extra_headers"] == {"Authorization": "[REDACTED]", "X-API-KEY": "[REDACTED]"}
    if mode == "full":
        (message,) = json.loads(a["gen_ai.input.messages"])
        assert message["parts"][0]["arguments"] == {"client_secret": "[REDACTED]"}


def test_step_endpoint_credentials_hidden():
    step = Step(id="step-1", model_endpoint="https://u:hunter2@proxy.local:8443/v1")
    span = convert_trace(
        ProviderTrace(request_json={}, response_json={}), TraceContext(step=step), resource=RESOURCE
    )
    assert (span.attributes["server.address"], span.attributes["server.port"]) == (
        "proxy.local",
        8443,
    )
    assert "hunter2" not in "\n".join(all_strings(span))
