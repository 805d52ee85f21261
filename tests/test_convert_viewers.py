"""What LLM viewers (Phoenix, Langfuse) read: input/output, sessions, error roll-up, tool role,
summarization shape, file-mode run spans and limits, on the recorded fixtures.

Expected values are read off the fixture files by hand (message texts, tool call ids, agent and
user ids, error messages), not produced by the converter.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from opentelemetry.trace import StatusCode

from exporter.convert import (
    ConvertOptions,
    RunSummary,
    TraceContext,
    build_resource,
    conversion_notes,
    convert_run,
    convert_trace,
    needs_run_span,
    run_span_id_for,
    summarize_call,
    trace_id_for_run,
)
from exporter.models import ProviderTrace, Run, Step, StepMetrics, parse_record, parse_trace_body
from tests.conftest import LETTA

RESOURCE = build_resource()
NONE = ConvertOptions()
FULL = ConvertOptions(content="full")
RAW = ConvertOptions(content="raw")
USER = "user-00000000-0000-4000-8000-000000000000"
AGENT = "agent-d027b87e-6c15-4e07-a892-d15d95d77843"  # the OpenAI agent of the step fixtures
ANTHROPIC_AGENT = "agent-b9f9e0b4-4ad3-4b1b-9c5d-1e1a9d1c9f4e"


def trace_file(name: str) -> ProviderTrace:
    return parse_trace_body((LETTA / "traces" / name).read_bytes())


def step_file(name: str) -> tuple[ProviderTrace, Step, StepMetrics]:
    data = json.loads((LETTA / "steps" / f"{name}.json").read_bytes())
    trace = parse_trace_body(json.dumps(data["trace"]))
    assert trace is not None
    return (
        trace,
        parse_record(Step, json.dumps(data["step"])),
        parse_record(StepMetrics, json.dumps(data["metrics"])),
    )


def socket_records() -> list[ProviderTrace]:
    """The socket recordings as ProviderTraces (the socket protocol's fields, renamed)."""
    traces = []
    for line in (LETTA / "socket" / "records.ndjson").read_text().splitlines():
        r = json.loads(line)
        response = r["response"]
        if response is None:
            response = {"error": r["error"], "error_type": r["error_type"]}
        traces.append(
            ProviderTrace(
                id=r["provider_trace_id"],
                request_json=r["request"],
                response_json=response,
                step_id=r["step_id"],
                agent_id=r["agent_id"],
                agent_tags=r["tags"],
                call_type=r["type"],
                run_id=r["run_id"],
                source=r["source"],
                org_id=r["org_id"],
                user_id=r["user_id"],
                compaction_settings=r["compaction_settings"],
                llm_config=r["llm_config"],
                created_at=datetime.fromisoformat(r["timestamp"]),
            )
        )
    return traces


def database_summarizations() -> list[ProviderTrace]:
    rows = json.loads((LETTA / "traces" / "summarization_traces_from_database.json").read_bytes())
    return [parse_record(ProviderTrace, json.dumps(row)) for row in rows["rows"]]


# --- 1. input / output -----------------------------------------------------------------------
@pytest.mark.parametrize("options", [FULL, RAW])
def test_llm_span_input_is_the_messages_sent_and_output_the_completion_text(options):
    a = convert_trace(trace_file("nonstreaming_trace.json"), options=options, resource=RESOURCE)
    a = a.attributes
    assert a["input.mime_type"] == "application/json"
    sent = json.loads(a["input.value"])
    assert sent[0]["role"] == "system"
    assert sent[-1] == {
        "role": "user",
        "parts": [{"type": "text", "content": "Hi! Can you help me plan a weekend?"}],
    }
    assert a["output.mime_type"] == "text/plain"
    assert a["output.value"] == (
        "That is an interesting question. The short version is that it depends on the context "
        "window."
    )


def test_llm_span_output_is_the_tool_calls_when_the_model_called_tools():
    a = convert_trace(
        trace_file("nonstreaming_tool_call_trace.json"), options=FULL, resource=RESOURCE
    ).attributes
    assert a["output.mime_type"] == "application/json"
    (call,) = json.loads(a["output.value"])
    assert call == {
        "type": "tool_call",
        "name": "conversation_search",
        "id": "call_cc004b3bd711442db59bf322",
        "arguments": {"query": "drinks", "limit": 5},
    }


def test_no_input_or_output_without_content():
    for name in ("nonstreaming_trace.json", "anthropic_tool_use_trace.json"):
        a = convert_trace(trace_file(name), options=NONE, resource=RESOURCE).attributes
        assert not any(k.startswith(("input.", "output.")) for k in a)
    run = convert_run(
        Run(id="run-1"),
        summary=RunSummary(input_text="hi", output_text="bye"),
        options=NONE,
        resource=RESOURCE,
    )
    assert not any(k.startswith(("input.", "output.")) for k in run.attributes)


def test_input_value_respects_the_size_limit_and_redaction():
    options = ConvertOptions(content="full", content_max_bytes=300)
    a = convert_trace(trace_file("nonstreaming_trace.json"), options=options, resource=RESOURCE)
    a = a.attributes
    assert len(a["input.value"].encode()) <= 300
    json.loads(a["input.value"])  # still valid JSON
    assert "input.value" in a["letta.content.truncated"]
    options = ConvertOptions(content="full", redact_patterns=("weekend", "context window"))
    a = convert_trace(trace_file("nonstreaming_trace.json"), options=options, resource=RESOURCE)
    a = a.attributes
    assert "weekend" not in a["input.value"]
    assert "Hi! Can you help me plan a [REDACTED]?" in a["input.value"]
    assert a["output.value"].endswith("it depends on the [REDACTED].")
    trace, _step, _metrics = step_file("step-34cc935d-18dd-4162-8a34-92d3293bbadb")
    options = ConvertOptions(content="full", redact_patterns=("drinks",))
    span = convert_trace(trace, options=options, resource=RESOURCE)
    summary = summarize_call(trace, span, options)
    assert (
        summary.input_text
        == "What did I tell you about [REDACTED] earlier? TOOL:conversation_search"
    )


def _run_summary(names: list[str], options: ConvertOptions) -> RunSummary:
    summary = RunSummary()
    for name in names:
        trace, step, metrics = step_file(name)
        span = convert_trace(trace, TraceContext(step=step, metrics=metrics), options=options,
                             resource=RESOURCE)  # fmt: skip
        summary = summary.merge(summarize_call(trace, span, options))
    return summary


def test_run_span_input_and_answer_from_the_first_and_last_call():
    # run-d1236e24: a conversation_search tool call, then the answer.
    steps = [
        "step-34cc935d-18dd-4162-8a34-92d3293bbadb",
        "step-9570a878-e959-49d4-867c-ce92743990ab",
    ]
    for order in (steps, steps[::-1]):  # merging does not depend on the order seen
        summary = _run_summary(order, FULL)
        assert (
            summary.input_text
            == "What did I tell you about drinks earlier? TOOL:conversation_search"
        )
        assert summary.output_text == "Noted. I will remember that for later."
        assert summary.calls == 2
        assert summary.failed_calls == 0
    span = convert_run(
        Run(id="run-d1236e24-e8c8-4512-b21d-4b2c0e9d96da", agent_id=AGENT),
        summary=summary,
        options=FULL,
        resource=RESOURCE,
    )
    a = span.attributes
    assert a["input.value"] == "What did I tell you about drinks earlier? TOOL:conversation_search"
    assert a["input.mime_type"] == "text/plain"
    assert a["output.value"] == "Noted. I will remember that for later."
    assert a["output.mime_type"] == "text/plain"


def test_run_answer_of_a_legacy_agent_is_its_send_message():
    summary = _run_summary(["step-0c2f784d-911b-4c6e-8ab8-e2bccd319510"], FULL)
    assert summary.input_text == "Stream me a reply."
    assert summary.output_text == "Thanks for the update! Anything else?"


def test_run_summary_keeps_no_text_without_content():
    summary = _run_summary(["step-9570a878-e959-49d4-867c-ce92743990ab"], NONE)
    assert summary.input_text is None
    assert summary.output_text is None
    assert summary.calls == 1


# --- 2. sessions -----------------------------------------------------------------------------
def test_session_is_the_agent_without_a_conversation_and_user_is_the_traces_user():
    a = convert_trace(trace_file("nonstreaming_trace.json"), resource=RESOURCE).attributes
    assert a["session.id"] == AGENT
    assert a["gen_ai.conversation.id"] == AGENT
    assert a["user.id"] == USER


def test_session_is_the_runs_conversation_when_it_has_one():
    run = Run(id="run-36d2c5d1-ab84-4c5a-a84e-d75dab01bece", conversation_id="conv-42")
    a = convert_trace(
        trace_file("nonstreaming_trace.json"), TraceContext(run=run), resource=RESOURCE
    ).attributes
    assert a["session.id"] == a["gen_ai.conversation.id"] == "conv-42"
    r = convert_run(
        Run(id="r", agent_id=AGENT, conversation_id="conv-42"),
        summary=RunSummary(user_id=USER),
        resource=RESOURCE,
    ).attributes
    assert r["session.id"] == r["gen_ai.conversation.id"] == "conv-42"
    assert r["user.id"] == USER


# --- 3. errors -------------------------------------------------------------------------------
def test_failed_run_without_metadata_error_takes_the_failed_calls_message():
    trace, step, metrics = step_file("step-379dfb33-c522-46bb-82e3-9486defbc0bb")
    call = convert_trace(trace, TraceContext(step=step, metrics=metrics), resource=RESOURCE)
    summary = summarize_call(trace, call, NONE)
    assert summary.failed_calls == 1
    span = convert_run(
        Run(id="run-105b5e49-7128-4e35-acdb-2ab895cb4805", status="failed"),
        summary=summary,
        resource=RESOURCE,
    )
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith("Error code: 500")
    assert span.attributes["error.type"] == "InternalServerError"
    assert span.attributes["letta.run.failed_calls"] == 1


def test_run_whose_calls_failed_and_that_stopped_on_an_error_is_an_error():
    trace, step, metrics = step_file("step-91ccf00d-9b3a-424a-a711-cd66405263da")  # 429
    call = convert_trace(trace, TraceContext(step=step, metrics=metrics), resource=RESOURCE)
    summary = summarize_call(trace, call, NONE)
    span = convert_run(
        Run(id="run-5d1183bb-6fd4-4d01-92f8-54c4de2c8dc1", stop_reason="llm_api_error"),
        summary=summary,
        resource=RESOURCE,
    )
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith("Error code: 429")
    assert span.attributes["error.type"] == "llm_api_error"
    # File mode: no run record at all, the run ended on the failed call.
    bare = convert_run(Run(id="run-5d1183bb-6fd4-4d01-92f8-54c4de2c8dc1"), summary=summary,
                       resource=RESOURCE)  # fmt: skip
    assert bare.status.status_code is StatusCode.ERROR
    assert bare.attributes["error.type"] == "RateLimitError"


def test_a_failed_call_the_run_recovered_from_leaves_the_run_unset():
    trace, _step, _metrics = step_file("step-91ccf00d-9b3a-424a-a711-cd66405263da")
    failed = summarize_call(trace, convert_trace(trace, resource=RESOURCE), NONE)
    ok_trace, _, _ = step_file("step-f77e4592-9397-4f15-80c4-2ba56a7cb10e")  # 08:29:12.708
    later = summarize_call(ok_trace, convert_trace(ok_trace, resource=RESOURCE), NONE)
    assert later.last_at_ns > failed.last_at_ns
    summary = failed.merge(later)
    assert summary.failed_calls == 1
    assert not summary.last_failed
    for run in (Run(id="r", status="completed", stop_reason="end_turn"), Run(id="r")):
        span = convert_run(run, summary=summary, resource=RESOURCE)
        assert span.status.status_code is StatusCode.UNSET


# --- 4. tool role ----------------------------------------------------------------------------
def test_anthropic_tool_results_have_the_tool_role():
    trace, _, _ = step_file("step-e9f54e8a-73ee-45fa-aa09-92f47aa1c713")
    a = convert_trace(trace, options=FULL, resource=RESOURCE).attributes
    messages = json.loads(a["gen_ai.input.messages"])
    tools = [m for m in messages if m["role"] == "tool"]
    assert len(tools) == 1
    (part,) = tools[0]["parts"]
    assert part["type"] == "tool_call_response"
    assert part["id"] == "toolu_01197cb9821ee14799b7662"
    assert "Prefers green tea." in part["response"]
    for message in messages:
        if message["role"] == "user":
            assert all(p["type"] != "tool_call_response" for p in message["parts"])
    # The same as OpenAI's tool messages.
    openai, _, _ = step_file("step-9570a878-e959-49d4-867c-ce92743990ab")
    o = json.loads(
        convert_trace(openai, options=FULL, resource=RESOURCE).attributes["gen_ai.input.messages"]
    )
    assert [m["role"] for m in o if m["parts"][0]["type"] == "tool_call_response"] == ["tool"]


def test_text_beside_a_tool_result_stays_a_user_message_in_order():
    trace = ProviderTrace(
        request_json={
            "model": "claude",
            "system": "s",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "before"},
                        {"type": "tool_result", "tool_use_id": "t1", "content": "r1"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": "r2"},
                        {"type": "text", "text": "after"},
                    ],
                }
            ],
        },
        response_json={"type": "message", "role": "assistant", "content": []},
    )
    messages = json.loads(
        convert_trace(trace, options=FULL, resource=RESOURCE).attributes["gen_ai.input.messages"]
    )
    assert [
        (m["role"], m["parts"][0].get("id", m["parts"][0].get("content"))) for m in messages
    ] == [
        ("user", "before"),
        ("tool", "t1"),
        ("tool", "t2"),
        ("user", "after"),
    ]


# --- 5. summarization ------------------------------------------------------------------------
def test_summarization_with_run_and_agent_hangs_under_the_run():
    traces = socket_records()
    (compaction,) = [t for t in traces if t.call_type == "summarization" and t.run_id]
    span = convert_trace(compaction, options=FULL, resource=RESOURCE)
    run_id = "run-18818a2f-448b-4dfd-a407-8dd0d4f953bf"
    assert compaction.run_id == run_id
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["letta.summarization"] is True
    assert span.parent is not None
    assert span.parent.span_id == run_span_id_for(run_id)
    assert span.context.trace_id == trace_id_for_run(run_id)
    assert needs_run_span(compaction)
    assert span.attributes["output.value"].startswith("Summary:")


def test_summarization_without_a_run_is_its_own_trace_with_the_agent():
    (alone,) = [t for t in socket_records() if t.call_type == "summarization" and not t.run_id]
    span = convert_trace(alone, options=FULL, resource=RESOURCE)
    assert span.parent is None
    assert span.attributes["gen_ai.agent.id"] == "agent-7181c5b1-0628-42c5-b995-1222a9d3efd6"
    assert span.attributes["letta.summarization"] is True
    assert not needs_run_span(alone)
    assert span.attributes["output.value"].startswith("Summary:")  # not the response's id blob
    assert span.name == "chat gpt-4o-mini"


def test_database_summarizations_get_the_same_shape_and_no_bare_agent_span():
    first, second, third = database_summarizations()
    for trace in (first, second):  # a run but no agent: a root in the run's trace
        span = convert_trace(trace, resource=RESOURCE)
        assert span.parent is None
        assert span.context.trace_id == trace_id_for_run(trace.run_id)
        assert not needs_run_span(trace)
        assert span.attributes["letta.summarization"] is True
        with_agent = trace.model_copy(update={"agent_id": AGENT})
        assert needs_run_span(with_agent)
        assert convert_trace(with_agent, resource=RESOURCE).parent is not None
    span = convert_trace(third, resource=RESOURCE)
    assert span.parent is None
    assert not needs_run_span(third)
    # agent steps with a run always get their run span
    assert needs_run_span(trace_file("nonstreaming_trace.json"))


# --- 6. file-mode run spans ------------------------------------------------------------------
def test_run_span_takes_agent_provider_and_model_from_the_calls():
    trace = trace_file("anthropic_nonstreaming_trace.json")
    summary = summarize_call(trace, convert_trace(trace, resource=RESOURCE), NONE)
    span = convert_run(Run(id=trace.run_id), summary=summary, resource=RESOURCE)
    a = span.attributes
    assert span.name == f"invoke_agent {trace.agent_id}"
    assert a["gen_ai.agent.id"] == trace.agent_id
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "claude-sonnet-4-5-20250929"
    assert a["user.id"] == USER


# --- 8. caps ---------------------------------------------------------------------------------
def test_created_at_zero_is_kept_and_said():
    trace = ProviderTrace(
        request_json={"model": "m"}, response_json={}, created_at=datetime(1970, 1, 1, tzinfo=UTC)
    )
    span = convert_trace(trace, resource=RESOURCE)
    assert span.start_time == 0
    assert any("before 2000-01-01" in w for w in span.attributes["letta.convert.warnings"])
    assert any("before 2000-01-01" in note for note in conversion_notes(span))
    ok = convert_trace(trace_file("nonstreaming_trace.json"), resource=RESOURCE)
    assert not any("2000" in note for note in conversion_notes(ok))


def test_ten_thousand_tags_are_capped():
    trace = trace_file("nonstreaming_trace.json").model_copy(
        update={"agent_tags": [f"tag-{i}" for i in range(10_000)]}
    )
    a = convert_trace(trace, resource=RESOURCE).attributes
    assert len(a["letta.agent.tags"]) == 64
    assert a["letta.agent.tags"][0] == "tag-0"
    assert "letta.agent.tags" in a["letta.content.truncated"]


def test_a_megabyte_model_name_gives_a_short_span_name():
    trace = trace_file("nonstreaming_trace.json")
    request = {**trace.request_json, "model": "m" * 1_000_000}
    response = {**trace.response_json, "model": "r" * 1_000_000}
    span = convert_trace(
        trace.model_copy(update={"request_json": request, "response_json": response}),
        resource=RESOURCE,
    )
    assert len(span.name) <= len("chat ") + 256 + 3
    a = span.attributes
    assert len(a["gen_ai.request.model"]) <= 259
    assert len(a["gen_ai.response.model"]) <= 259
    assert {"gen_ai.request.model", "gen_ai.response.model"} <= set(a["letta.content.truncated"])
    run = convert_run(Run(id="r"), summary=RunSummary(model="m" * 1_000_000), resource=RESOURCE)
    assert len(run.attributes["gen_ai.request.model"]) <= 259
