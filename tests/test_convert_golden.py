"""Golden tests: every recorded trace converts to the span a reader of the fixture expects.

The expected values are written out by hand from the fixture files (ids, times, models, token
counts, finish reasons, error types, endpoints), not produced by the converter. Anthropic input
tokens are the sum the conventions ask for: input_tokens + cache_read + cache_creation.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import datetime

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from exporter.convert import (
    SCHEMA_URL,
    TraceContext,
    build_resource,
    convert_trace,
    run_span_id_for,
    span_id_for,
)
from exporter.models import ProviderTrace, Step, StepMetrics, parse_record, parse_trace_body
from tests.conftest import CLOUD, LETTA

RESOURCE = build_resource()
STEPS = LETTA / "steps"
TRACES = LETTA / "traces"


def ns(text: str) -> int:
    """An ISO-8601 UTC timestamp in integer nanoseconds (the test's own arithmetic)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return calendar.timegm(moment.utctimetuple()) * 1_000_000_000 + moment.microsecond * 1000


@dataclass(frozen=True)
class Expected:
    trace: str  # provider trace id
    run: str | None
    end: str  # created_at
    duration: int  # ns
    name: str
    provider: str
    request_model: str
    response_model: str | None
    response_id: str | None
    finish: tuple[str, ...] | None
    tokens: tuple[int, int, int | None] | None  # input, output, cache read
    error: str | None = None
    server: tuple[str, int] = ("127.0.0.1", 9999)
    stream: bool = False
    tool_count: int = 3


OPENAI = "openai"
ANTHROPIC = "anthropic"
ANTHROPIC_HOST = ("api.anthropic.com", 443)
GPT4O = "gpt-4o-mini"
GPT4O_DATED = "gpt-4o-mini-2024-07-18"
CLAUDE = "claude-sonnet-4-5-20250929"

# fmt: off
STEP_CASES: dict[str, Expected] = {
    "step-09622d5b-eac6-4ad5-af97-6ad55771b4b0": Expected(
        "provider_trace-aa0c1a64-dd0e-4c7d-829b-71605408fb47",
        "run-df227a39-517b-4e3d-b1b5-11984f50ed62",
        "2026-11-21T08:29:13.128113Z", 47460213, "chat gpt-4.1", OPENAI, "gpt-4.1", "gpt-4.1",
        "chatcmpl-cf448ea4334241a38b4684efd6620", ("stop",), (2944, 20, 1472)),
    "step-0c2f784d-911b-4c6e-8ab8-e2bccd319510": Expected(
        "provider_trace-e19c5f27-60a5-4842-8e8d-b1b38a8165ca",
        "run-00e25572-2da4-48c5-8fea-02d429029c16",
        "2026-11-21T08:29:18.839057Z", 52482010, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O,
        "chatcmpl-f03c2f83494348e1866be2b4f25e1", None, (4410, 44, None), stream=True,
        tool_count=4),
    "step-163d6edc-0a92-480b-b247-afa45ff1564b": Expected(
        "provider_trace-feef0b50-2fbe-4784-8f6a-357c20b80b27",
        "run-2eedac0a-1a61-4bbf-8392-cc43346aaf58",
        "2026-11-21T08:29:20.130327Z", 66102221, f"chat {CLAUDE}", ANTHROPIC, CLAUDE, CLAUDE,
        "msg_01b6e4f568985a4ec588d2cf", ("end_turn",), (1165 + 1152, 15, 1152),
        server=ANTHROPIC_HOST),
    "step-18da8bc7-7e52-49fa-8367-64d050b84485": Expected(
        "provider_trace-6e7202f1-4de1-4992-a0c3-3e20a1e8fc72",
        "run-e33b3180-9ced-4407-b9c9-59f90523d82e",
        "2026-11-21T08:29:10.108121Z", 45856838, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-b20149649fed4e139854d778ee028", ("stop",), (2630, 58, 1280)),
    "step-34cc935d-18dd-4162-8a34-92d3293bbadb": Expected(
        "provider_trace-2a3e5c30-144a-4ff5-bd2b-44659a966528",
        "run-d1236e24-e8c8-4512-b21d-4b2c0e9d96da",
        "2026-11-21T08:29:09.164042Z", 49118776, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-126e626e69fb4745bd686c386000b", ("tool_calls",), (2357, 56, 1152)),
    "step-379dfb33-c522-46bb-82e3-9486defbc0bb": Expected(
        "provider_trace-f8cb0fcb-8db7-4463-97a0-f3d12a6ef60d",
        "run-105b5e49-7128-4e35-acdb-2ab895cb4805",
        "2026-11-21T08:29:11.331317Z", 0, "chat gpt-4o-mini", OPENAI, GPT4O, None, None, None, None,
        error="InternalServerError"),
    "step-67beedd0-50b6-4d44-b5e3-184a82938123": Expected(
        "provider_trace-bc2b0e2f-6089-434a-a4ae-4d3d74797595",
        "run-7ea7a974-3ea8-42f0-bbe4-a7ef2e303c5f",
        "2026-11-21T08:29:20.507146Z", 46324627, f"chat {CLAUDE}", ANTHROPIC, CLAUDE, CLAUDE,
        "msg_014940fdeac5f24d6c81004a", ("tool_use",), (1224 + 1152, 15, 1152),
        server=ANTHROPIC_HOST),
    "step-8a73b4e2-a0a1-4484-b6cd-e4149af627fa": Expected(
        "provider_trace-f6fe66ba-9dc5-412f-91ff-43be50d30ba4",
        "run-644e3fff-79aa-4000-8d06-bdbefc112b72",
        "2026-11-21T08:29:21.370107Z", 57298181, f"chat {CLAUDE}", ANTHROPIC, CLAUDE, CLAUDE,
        "msg_01e6df81dbe63e46c4855840", None, (1356 + 1280, 48, 1280), server=ANTHROPIC_HOST,
        stream=True),
    "step-91ccf00d-9b3a-424a-a711-cd66405263da": Expected(
        "provider_trace-1988b02b-2448-4fa9-b966-80c8c9d4a029",
        "run-5d1183bb-6fd4-4d01-92f8-54c4de2c8dc1",
        "2026-11-21T08:29:12.064308Z", 0, "chat gpt-4o-mini", OPENAI, GPT4O, None, None, None, None,
        error="RateLimitError"),
    "step-930c6e53-17d9-4134-8bf5-5da98ca9bfb3": Expected(
        "provider_trace-11d1cbfe-8b93-47b4-a12c-36d8feb6b008",
        "run-36d2c5d1-ab84-4c5a-a84e-d75dab01bece",
        "2026-11-21T08:29:08.773294Z", 288996720, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-e8db987b10dc4c21a4f1f19b87838", ("stop",), (2300, 47, 1088)),
    "step-9570a878-e959-49d4-867c-ce92743990ab": Expected(
        "provider_trace-47e16de8-8ff4-4886-9746-73124ef410b6",
        "run-d1236e24-e8c8-4512-b21d-4b2c0e9d96da",
        "2026-11-21T08:29:09.334548Z", 48517013, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-a880578dbfaa4af2960860c115c6e", ("stop",), (2472, 32, 1216)),
    "step-9e12055c-8c11-4cf7-86f6-a2fab51a60f5": Expected(
        "provider_trace-4a237348-3c90-43a5-bf1d-9b9cfdf22207",
        "run-fdfd8e7e-2832-4ac3-a597-fe6a0887dcdc",
        "2026-11-21T08:29:18.381367Z", 29898430, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-8c76b97d6c3d40b9bc25acae790a5", ("tool_calls",), (4227, 30, 2112),
        tool_count=4),
    "step-a1243541-2d93-4617-8f6e-afe8c2e52b38": Expected(
        "provider_trace-017bee2c-4fdf-4f89-aeef-5a3e856c6c50",
        "run-fdfd8e7e-2832-4ac3-a597-fe6a0887dcdc",
        "2026-11-21T08:29:18.243315Z", 28100250, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-6d4a5b273909433783415ee52b718", ("tool_calls",), (4021, 29, 1984),
        tool_count=4),
    "step-ce720eac-f22c-4377-93cd-878e95a3e1c4": Expected(
        "provider_trace-e9ab1727-6d30-4b19-af8b-edf27193de19",
        "run-9ed77836-17e0-4ea8-bce1-9d8fa858d2b2",
        "2026-11-21T08:29:17.880522Z", 33551113, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-f11d04eacf4143fd91af7d5e04b39", ("tool_calls",), (3845, 22, 1920),
        tool_count=4),
    "step-ceb6b600-a0e4-47a7-ae29-a64f5dd342bc": Expected(
        "provider_trace-e24ab297-dc86-4aef-b899-dbe782875dc4",
        "run-e33b3180-9ced-4407-b9c9-59f90523d82e",
        "2026-11-21T08:29:09.733100Z", 45591915, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-987d4faf8fc14d3eaa7420ef11488", ("tool_calls",), (2514, 51, 1216)),
    "step-d4405d9c-3326-4178-83c6-40bd601d1e62": Expected(
        "provider_trace-a3074347-3ba1-4468-9d38-42c857d04e80",
        "run-f349ec12-a1ef-49b7-aed0-0ada27cdcd19",
        "2026-11-21T08:29:25.466429Z", 0, f"chat {CLAUDE}", ANTHROPIC, CLAUDE, None, None, None,
        None,
        error="InternalServerError", server=ANTHROPIC_HOST),
    "step-e28cf827-d4a5-413b-833c-e32578917161": Expected(
        "provider_trace-1cb54743-275b-43c9-853f-0fdbf848f2d3",
        "run-ea0795e2-b772-494e-9a75-8d96ad76ae93",
        "2026-11-21T08:29:10.894261Z", 46702834, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-3bc1b4d89ce5430b806563aff63d9", ("stop",), (2714, 50, 1344)),
    "step-e91fb440-96ba-4c7a-9177-57b4f9ac06af": Expected(
        "provider_trace-190d7528-2bb2-4a13-8367-a33741a4b155",
        "run-18d995af-8246-4b05-8ee7-424800864342",
        "2026-11-21T08:29:12.347104Z", 50440459, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-491027e4ece841ba9a2a9dbe75ed2", ("tool_calls",), (2780, 17, 1344)),
    "step-e9f54e8a-73ee-45fa-aa09-92f47aa1c713": Expected(
        "provider_trace-cfaf6f81-1ca0-482e-afcf-82a8a81bc4a8",
        "run-7ea7a974-3ea8-42f0-bbe4-a7ef2e303c5f",
        "2026-11-21T08:29:20.871573Z", 51314772, f"chat {CLAUDE}", ANTHROPIC, CLAUDE, CLAUDE,
        "msg_01702268a0f4b14567bfb85a", ("end_turn",), (1265 + 1216, 54, 1216),
        server=ANTHROPIC_HOST),
    "step-f016f3f3-84c7-4f56-bcdc-f5a1d49ea18d": Expected(
        "provider_trace-928fe388-7051-4fe0-91e0-d75692927112",
        "run-f5ea7b49-1d67-47a4-a038-27321e26feab",
        "2026-11-21T08:29:11.617963Z", 51932854, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-5dec10bc8e5f45ee8842173d2f8d3", ("stop",), (2743, 60, 1344)),
    "step-f77e4592-9397-4f15-80c4-2ba56a7cb10e": Expected(
        "provider_trace-c08deed6-25a2-4e88-9762-db92c2da29b4",
        "run-18d995af-8246-4b05-8ee7-424800864342",
        "2026-11-21T08:29:12.708126Z", 47487874, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-fe3602f4454d4992960969853f67a", ("stop",), (2905, 46, 1408)),
    "step-fe5dbafe-0744-4a10-9314-b733936bd187": Expected(
        "provider_trace-301630be-a278-4683-9aa8-5003c50b07d7",
        "run-1e048906-e5bf-40eb-a999-b376c19885b8",
        "2026-11-21T08:29:10.502808Z", 52509676, "chat gpt-4o-mini", OPENAI, GPT4O, GPT4O_DATED,
        "chatcmpl-e8426ebb97d74c219edfa990121da", ("stop",), (2679, 18, 1280)),
}
# fmt: on


def _load_step(name: str) -> tuple[ProviderTrace | None, Step, StepMetrics]:
    data = json.loads((STEPS / f"{name}.json").read_bytes())
    return (
        parse_trace_body(json.dumps(data["trace"])),
        parse_record(Step, json.dumps(data["step"])),
        parse_record(StepMetrics, json.dumps(data["metrics"])),
    )


def _check(span, exp: Expected, *, duration_source: str) -> None:
    attrs = span.attributes
    assert span.name == exp.name
    assert span.kind is SpanKind.CLIENT
    assert span.end_time == ns(exp.end)
    assert span.start_time == ns(exp.end) - exp.duration
    assert attrs["letta.duration.source"] == duration_source
    assert attrs["letta.timestamp.source"] == "created_at"
    assert attrs["letta.provider_trace.id"] == exp.trace
    assert span.context.span_id == span_id_for(exp.trace)
    assert span.context.is_remote is False
    if exp.run:
        run_hex = exp.run.removeprefix("run-").replace("-", "")
        assert span.context.trace_id == int(run_hex, 16)
        assert span.parent is not None
        assert span.parent.trace_id == int(run_hex, 16)
        assert span.parent.span_id == run_span_id_for(exp.run)
        assert span.parent.is_remote is False
        assert attrs["letta.run.id"] == exp.run
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == exp.provider
    assert attrs["gen_ai.request.model"] == exp.request_model
    assert attrs.get("gen_ai.response.model") == exp.response_model
    assert attrs.get("gen_ai.response.id") == exp.response_id
    assert attrs.get("gen_ai.response.finish_reasons") == exp.finish
    if exp.tokens is None:
        assert "gen_ai.usage.input_tokens" not in attrs
        assert "gen_ai.usage.output_tokens" not in attrs
    else:
        assert attrs["gen_ai.usage.input_tokens"] == exp.tokens[0]
        assert attrs["gen_ai.usage.output_tokens"] == exp.tokens[1]
        assert attrs.get("gen_ai.usage.cache_read.input_tokens") == exp.tokens[2]
        assert attrs["letta.usage.source"] == "response_json"
    assert (attrs["server.address"], attrs["server.port"]) == exp.server
    assert attrs.get("gen_ai.request.stream", False) is exp.stream
    assert attrs["letta.request.tool_count"] == exp.tool_count
    assert attrs["gen_ai.request.temperature"] == 1.0
    assert attrs["gen_ai.request.max_tokens"] == 16384
    assert attrs["letta.call_type"] == "agent_step"
    assert attrs["letta.source"] == "memgpt-server"
    assert attrs["letta.org.id"] == "org-00000000-0000-4000-8000-000000000000"
    assert attrs["letta.user.id"] == "user-00000000-0000-4000-8000-000000000000"
    if exp.error:
        assert attrs["error.type"] == exp.error
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description.startswith("Error code: ")
    else:
        assert "error.type" not in attrs
        assert span.status.status_code is StatusCode.UNSET
    # content is off by default
    for key in attrs:
        assert not key.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system", "gen_ai.tool"))


@pytest.mark.parametrize("name", sorted(STEP_CASES))
def test_step_fixture_with_step_and_metrics(name):
    trace, step, metrics = _load_step(name)
    assert trace is not None
    span = convert_trace(trace, TraceContext(step=step, metrics=metrics), resource=RESOURCE)
    exp = STEP_CASES[name]
    _check(span, exp, duration_source="step_metrics.llm_request_ns" if exp.duration else "none")
    attrs = span.attributes
    assert attrs["letta.step.id"] == name
    assert attrs["letta.step.status"] == ("failed" if exp.error else "success")
    assert attrs["letta.step.model_handle"] in (
        "openai-proxy/gpt-4o-mini",
        "openai-proxy/gpt-4.1",
        f"anthropic/{CLAUDE}",
    )
    if exp.duration:
        assert attrs["letta.step.llm_request_ns"] == exp.duration
    if exp.tokens:
        assert attrs["letta.step.prompt_tokens"] == exp.tokens[0]  # Letta's own sum agrees


def test_failed_step_error_type_comes_from_the_call_not_the_step():
    trace, step, metrics = _load_step("step-379dfb33-c522-46bb-82e3-9486defbc0bb")
    span = convert_trace(trace, TraceContext(step=step, metrics=metrics), resource=RESOURCE)
    assert span.attributes["error.type"] == "InternalServerError"
    assert span.attributes["letta.step.error_type"] == "LLMServerError"
    assert span.attributes["letta.step.stop_reason"] == "llm_api_error"
    assert span.attributes["letta.step.step_ns"] == 136839259


def test_step_without_trace_has_nothing_to_convert():
    trace, step, _ = _load_step("step-0926f9bd-777f-4b1a-a0f2-d59219f2b880")
    assert trace is None
    assert step.status == "failed"


def test_every_step_fixture_is_covered():
    names = {p.stem for p in STEPS.glob("*.json")}
    assert names == set(STEP_CASES) | {"step-0926f9bd-777f-4b1a-a0f2-d59219f2b880"}
    assert len(names) == 23


# --- single trace bodies, without any context: zero-length spans at created_at -----------------
TRACE_CASES: dict[str, tuple[str, Expected]] = {
    name: ("steps-equivalent", exp)
    for name, exp in {
        "nonstreaming_trace.json": STEP_CASES["step-930c6e53-17d9-4134-8bf5-5da98ca9bfb3"],
        "nonstreaming_tool_call_trace.json": STEP_CASES[
            "step-34cc935d-18dd-4162-8a34-92d3293bbadb"
        ],
        "anthropic_nonstreaming_trace.json": STEP_CASES[
            "step-163d6edc-0a92-480b-b247-afa45ff1564b"
        ],
        "anthropic_tool_use_trace.json": STEP_CASES["step-67beedd0-50b6-4d44-b5e3-184a82938123"],
        "streaming_anthropic_trace.json": STEP_CASES["step-8a73b4e2-a0a1-4484-b6cd-e4149af627fa"],
        "streaming_memgpt_v2_trace.json": STEP_CASES["step-0c2f784d-911b-4c6e-8ab8-e2bccd319510"],
        "error_trace_openai_InternalServerError.json": STEP_CASES[
            "step-379dfb33-c522-46bb-82e3-9486defbc0bb"
        ],
        "error_trace_openai_RateLimitError.json": STEP_CASES[
            "step-91ccf00d-9b3a-424a-a711-cd66405263da"
        ],
        "error_trace_anthropic_InternalServerError.json": STEP_CASES[
            "step-d4405d9c-3326-4178-83c6-40bd601d1e62"
        ],
        "billing_headers_trace.json": STEP_CASES["step-fe5dbafe-0744-4a10-9314-b733936bd187"],
    }.items()
}


@pytest.mark.parametrize("file", sorted(TRACE_CASES))
def test_trace_fixture_alone(file):
    trace = parse_trace_body((TRACES / file).read_bytes())
    _, exp = TRACE_CASES[file]
    span = convert_trace(trace, resource=RESOURCE)
    zero = Expected(**{**exp.__dict__, "duration": 0})
    _check(span, zero, duration_source="none")
    assert "letta.step.status" not in span.attributes  # no step given
    assert span.attributes["letta.agent.tags"] in (
        ("team:support", "env:staging"),
        ("provider:anthropic", "team:research"),
        ("legacy", "team:support"),
    )
    assert "letta.billing.plan_type" not in span.attributes  # billing_context null on 0.16.8


def test_every_trace_fixture_is_covered():
    files = {p.name for p in TRACES.glob("*.json")}
    assert files == set(TRACE_CASES) | {"summarization_traces_from_database.json"}


def test_streaming_fixture_is_marked_streaming_by_shape():
    trace = parse_trace_body((TRACES / "streaming_anthropic_trace.json").read_bytes())
    attrs = convert_trace(trace, resource=RESOURCE).attributes
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["letta.request.stream.source"] == "response_shape"
    assert attrs["letta.response.shape"] == "letta.streaming"
    assert attrs["letta.request.shape"] == "anthropic.messages"
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 0


def test_openai_specific_attributes_only_for_openai():
    openai = convert_trace(
        parse_trace_body((TRACES / "nonstreaming_trace.json").read_bytes()), resource=RESOURCE
    )
    assert openai.attributes["openai.api.type"] == "chat_completions"
    assert openai.attributes["openai.response.service_tier"] == "default"
    assert openai.attributes["openai.response.system_fingerprint"] == "fp_fake0001"
    assert openai.attributes["gen_ai.usage.reasoning.output_tokens"] == 0
    anthropic = convert_trace(
        parse_trace_body((TRACES / "anthropic_nonstreaming_trace.json").read_bytes()),
        resource=RESOURCE,
    )
    assert not any(k.startswith("openai.") for k in anthropic.attributes)


def test_llm_config_is_flattened():
    attrs = convert_trace(
        parse_trace_body((TRACES / "nonstreaming_trace.json").read_bytes()), resource=RESOURCE
    ).attributes
    assert attrs["letta.llm_config.model"] == "gpt-4o-mini"
    assert attrs["letta.llm_config.model_endpoint_type"] == "openai"
    assert attrs["letta.llm_config.context_window"] == 128000
    assert attrs["letta.llm_config.temperature"] == 1.0
    assert attrs["letta.llm_config.put_inner_thoughts_in_kwargs"] is False
    assert attrs["letta.llm_config.handle"] == "openai-proxy/gpt-4o-mini"
    assert "letta.llm_config.display_name" not in attrs  # null: not set
    assert attrs["letta.provider_trace.created_at"] == "2026-11-21T08:29:08.773294+00:00"
    assert attrs["letta.provider_trace.updated_at"] == "2026-11-21T08:29:08.781501+00:00"
    assert attrs["letta.created_by_id"] == "user-00000000-0000-4000-8000-000000000000"
    assert attrs["letta.last_updated_by_id"] == "user-00000000-0000-4000-8000-000000000000"


# --- summarization rows (read from the database) ---------------------------------------------
def _summarization_rows() -> list[ProviderTrace]:
    rows = json.loads((TRACES / "summarization_traces_from_database.json").read_bytes())["rows"]
    return [parse_record(ProviderTrace, json.dumps(row)) for row in rows]


def test_summarization_rows():
    first, second, third = (convert_trace(t, resource=RESOURCE) for t in _summarization_rows())

    a = first.attributes
    assert first.name == "chat gpt-4.1"
    assert first.context.trace_id == 0x3E9350D1DA9D4B7F904B14C3E9A3586D
    assert first.end_time == first.start_time == ns("2026-11-21T08:29:16.188295Z")
    assert a["letta.call_type"] == "summarization"
    assert a["letta.provider_trace.id"] == "provider_trace-2ba5a1e0-78a6-4957-9549-1b7a245a1040"
    assert a["letta.step.id"] == "step-7c6b5401-c250-4b7f-856b-5f8b581bdb16"
    assert a["gen_ai.operation.name"] == "chat"  # a summarization call is still an LLM chat call
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (671, 59)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.response.model"] == "gpt-4.1"
    assert a["letta.compaction_settings.mode"] == "sliding_window"
    assert a["letta.compaction_settings.messages_summarized"] == 3
    assert a["letta.compaction_settings.messages_kept"] == 9
    assert a["letta.compaction_settings.sliding_window_percentage"] == 0.3
    assert a["letta.compaction_settings.clip_chars"] == 50000
    assert a["letta.agent.tags"] == ("team:research",)
    assert "letta.request.tool_count" not in a  # tools: null

    b = second.attributes
    assert second.context.trace_id == 0xEEED4C82C8694B68887FEC423E0CC905
    assert (b["gen_ai.usage.input_tokens"], b["gen_ai.usage.output_tokens"]) == (902, 18)
    assert b["letta.compaction_settings.messages_summarized"] == 5

    c = third.attributes
    assert third.parent is None  # no run: a trace of its own
    assert "letta.run.id" not in c
    assert "letta.step.id" not in c
    assert third.context.span_id == span_id_for(
        "provider_trace-9a19ee33-7899-4609-8042-d7307274c9b5"
    )
    assert third.name == "chat gpt-4o-mini"
    assert c["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (1009, 15)
    assert c["letta.compaction_settings.mode"] == "summarize_all"
    assert c["letta.agent.tags"] == ()
    assert third.end_time == ns("2026-11-21T08:29:27.338565Z")


def test_summarization_with_the_step_keeps_its_own_usage():
    trace = _summarization_rows()[0]
    step = Step(
        id="step-7c6b5401-c250-4b7f-856b-5f8b581bdb16", prompt_tokens=5000, completion_tokens=9
    )
    attrs = convert_trace(trace, TraceContext(step=step), resource=RESOURCE).attributes
    assert attrs["gen_ai.usage.input_tokens"] == 671
    assert attrs["letta.usage.source"] == "response_json"


# --- cloud shape: latency_ms and billing -----------------------------------------------------
def test_cloud_nonstreaming_uses_latency_ms():
    span = convert_trace(
        parse_record(ProviderTrace, (CLOUD / "nonstreaming_trace_cloud.json").read_bytes()),
        resource=RESOURCE,
    )
    a = span.attributes
    assert span.end_time == ns("2026-11-21T08:29:08.773294Z")
    assert span.start_time == ns("2026-11-21T08:29:08.773294Z") - 1834 * 1_000_000
    assert a["letta.duration.source"] == "latency_ms"
    assert a["letta.latency_ms"] == 1834
    assert (
        a["letta.billing.plan_type"],
        a["letta.billing.cost_source"],
        a["letta.billing.customer_id"],
    ) == ("pro", "credits", "cus_8f2k1")
    assert a["letta.agent.tags"] == ("support", "eu")
    assert span.context.trace_id == 0x36D2C5D1AB844C5AA84ED75DAB01BECE
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (2300, 47)


def test_cloud_latency_wins_over_step_metrics():
    trace = parse_record(
        ProviderTrace, (CLOUD / "anthropic_tool_use_trace_cloud.json").read_bytes()
    )
    _, step, metrics = _load_step("step-67beedd0-50b6-4d44-b5e3-184a82938123")
    span = convert_trace(trace, TraceContext(step=step, metrics=metrics), resource=RESOURCE)
    assert span.start_time == ns("2026-11-21T08:29:20.507146Z") - 4210 * 1_000_000
    assert span.attributes["letta.duration.source"] == "latency_ms"
    assert span.attributes["letta.billing.plan_type"] == "enterprise"
    assert span.attributes["letta.billing.cost_source"] == "quota"
    assert span.attributes["letta.billing.customer_id"] == "cus_77aa0"
    assert span.attributes["letta.agent.tags"] == ("research",)
    assert span.attributes["gen_ai.usage.input_tokens"] == 2376


def test_seed_example_with_placeholder_values():
    trace = parse_record(ProviderTrace, (CLOUD / "seed_example_response.json").read_bytes())
    span = convert_trace(trace, resource=RESOURCE)
    a = span.attributes
    assert span.name == "chat"  # no model anywhere
    assert span.start_time == span.end_time == ns("2019-12-27T18:11:19.117Z")
    assert a["letta.duration.source"] == "latency_ms"  # latency 0
    assert "gen_ai.provider.name" not in a  # nothing says which provider
    assert a["letta.response.shape"] == "unknown"
    assert a["letta.llm_config.foo"] == "bar"
    assert a["letta.compaction_settings.foo"] == "bar"
    assert a["letta.run.id"] == "run_id"
    # "run_id" is not a UUID: hashed, stable, never 0
    assert span.context.trace_id != 0
    assert convert_trace(trace, resource=RESOURCE).context.trace_id == span.context.trace_id
    assert span.resource.schema_url == SCHEMA_URL
