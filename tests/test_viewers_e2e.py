"""What LLM viewers read, end to end: fake Letta (or a file) -> exporter -> real OTLP receiver.

Run spans carry the run's first input and final answer (content ``full``; nothing with ``none``),
a run whose call failed is an ERROR with the reason, every span names its session and user, tool
results have the tool role, and a compaction with no agent hangs under no bare ``invoke_agent``
span, from the API and a file alike.
Expected texts are read off the fixture files by hand (see tests/test_convert_viewers.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from exporter import wiring
from exporter.convert import run_span_id_for, trace_id_for_run
from exporter.replay import export_file
from exporter.settings import Settings
from exporter.telemetry import DeadLetter, Metrics
from testkit import FakeLetta, LettaStore, OtlpReceiver, ReceivedSpan
from tests.conftest import LETTA
from tests.test_worker_e2e import make_worker, settings_for

pytestmark = pytest.mark.e2e

USER = "user-00000000-0000-4000-8000-000000000000"
ERROR = 2  # OTLP Status.STATUS_CODE_ERROR
UNSET = 0
CONTENT_KEYS = ("input.value", "output.value", "gen_ai.input.messages", "gen_ai.output.messages")
SUMMARIZATIONS = json.loads(
    (LETTA / "traces" / "summarization_traces_from_database.json").read_bytes()
)["rows"]


def run_spans(rx: OtlpReceiver) -> dict[str, ReceivedSpan]:
    """The received invoke_agent spans by run id."""
    return {
        s.attributes["letta.run.id"]: s
        for s in rx.spans()
        if s.attributes.get("gen_ai.operation.name") == "invoke_agent"
    }


async def export_api(settings: Settings) -> None:
    async with make_worker(settings) as worker:
        await worker.export_window()


def test_run_spans_show_input_answer_errors_and_sessions_with_content_full(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        asyncio.run(export_api(settings_for(letta, rx, tmp_path, content="full")))
        assert rx.wait_idle()
        runs = run_spans(rx)
        spans = rx.spans()

    answered = runs["run-d1236e24-e8c8-4512-b21d-4b2c0e9d96da"]
    a = answered.attributes
    assert a["input.value"] == "What did I tell you about drinks earlier? TOOL:conversation_search"
    assert a["input.mime_type"] == "text/plain"
    assert a["output.value"] == "Noted. I will remember that for later."
    assert a["output.mime_type"] == "text/plain"
    assert answered.span.status.code == UNSET

    # The run whose only call got a 500 failed: its span is an error, with the call's reason.
    failed = runs["run-105b5e49-7128-4e35-acdb-2ab895cb4805"]
    assert failed.span.status.code == ERROR
    assert "Error code: 500" in failed.span.status.message
    assert failed.attributes["error.type"]
    assert failed.attributes["letta.run.failed_calls"] == 1
    limited = runs["run-5d1183bb-6fd4-4d01-92f8-54c4de2c8dc1"]  # a 429, then the run failed
    assert limited.span.status.code == ERROR
    assert "Error code: 429" in limited.span.status.message

    # Sessions: a Letta agent's runs group by the agent (no conversation ids in the fixtures).
    for span in spans:
        attrs = span.attributes
        agent = attrs.get("gen_ai.agent.id")
        assert agent, span.name
        assert attrs["session.id"] == attrs["gen_ai.conversation.id"] == agent
    llm = [s for s in spans if s.attributes.get("gen_ai.operation.name") != "invoke_agent"]
    assert all(s.attributes["user.id"] == USER for s in llm)
    assert a["user.id"] == USER
    assert all(s.attributes["input.value"] for s in llm)
    # Tool results have the tool role whichever provider sent them.
    by_step = {s.attributes["letta.step.id"]: s.attributes for s in llm}
    for step_id in (
        "step-e9f54e8a-73ee-45fa-aa09-92f47aa1c713",  # Anthropic: a tool_result block
        "step-9570a878-e959-49d4-867c-ce92743990ab",  # OpenAI: a tool message
    ):
        messages = json.loads(by_step[step_id]["gen_ai.input.messages"])
        tools = [m for m in messages if m["role"] == "tool"]
        assert tools, step_id
        assert all(p["type"] == "tool_call_response" for m in tools for p in m["parts"])
        users = [p for m in messages if m["role"] == "user" for p in m["parts"]]
        assert all(p["type"] != "tool_call_response" for p in users)


def test_nothing_of_the_content_with_content_none(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        asyncio.run(export_api(settings_for(letta, rx, tmp_path, content="none")))
        assert rx.wait_idle()
        spans = rx.spans()
        runs = run_spans(rx)
    assert len(spans) > len(runs) > 0
    for span in spans:
        assert not set(CONTENT_KEYS) & set(span.attributes), span.name
    # The errors and sessions do not depend on the content policy.
    failed = runs["run-105b5e49-7128-4e35-acdb-2ab895cb4805"]
    assert failed.span.status.code == ERROR
    assert "Error code: 500" in failed.span.status.message
    assert all("session.id" in s.attributes for s in spans)


def _assert_compactions_alone(rx: OtlpReceiver) -> None:
    """The database summarizations (a run, no agent): roots in their run's trace, no run span."""
    by_id = {s.span_id: s for s in rx.spans()}
    for row in SUMMARIZATIONS[:2]:
        run_id = row["run_id"]
        assert f"{run_span_id_for(run_id):016x}" not in by_id  # no bare invoke_agent
        (span,) = [
            s for s in rx.spans() if s.attributes.get("letta.provider_trace.id") == row["id"]
        ]
        assert span.trace_id == f"{trace_id_for_run(run_id):032x}"
        assert not span.span.parent_span_id
        assert span.attributes["letta.summarization"] is True
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert not span.name.startswith("invoke_agent")
    assert not [s for s in rx.spans() if s.name == "invoke_agent"]


def test_summarization_shape_from_the_api(tmp_path):
    store = LettaStore.from_fixtures(LETTA)
    for row in SUMMARIZATIONS[:2]:
        store.add_step({"id": row["step_id"], "run_id": row["run_id"]}, trace=row)
    with FakeLetta(store) as letta, OtlpReceiver() as rx:
        asyncio.run(export_api(settings_for(letta, rx, tmp_path)))
        assert rx.wait_idle()
        _assert_compactions_alone(rx)


def test_summarization_shape_and_file_mode_run_spans_from_a_file(tmp_path):
    path = tmp_path / "traces.jsonl"
    recorded = (LETTA / "socket" / "records.ndjson").read_text().splitlines()
    rows = [json.loads(line) for line in recorded]
    lines = [json.dumps(row) for row in SUMMARIZATIONS]
    for r in rows:  # the socket recordings as ProviderTrace records
        response = r["response"] or {"error": r["error"], "error_type": r["error_type"]}
        record = {
            "id": r["provider_trace_id"],
            "request_json": r["request"],
            "response_json": response,
            "step_id": r["step_id"],
            "agent_id": r["agent_id"],
            "call_type": r["type"],
            "run_id": r["run_id"],
            "user_id": r["user_id"],
            "created_at": r["timestamp"],
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")

    with OtlpReceiver() as rx:
        settings = Settings(  # type: ignore[call-arg]
            sink="otlp",
            otlp_protocol="grpc",
            otlp_traces_endpoint=rx.grpc_endpoint,
            content="full",
            state_path=tmp_path / "state.json",
            dead_letter_path=tmp_path / "dead.jsonl",
        )
        exporter = wiring.build_exporter(settings)
        try:
            shipper = wiring.build_shipper(
                settings,
                exporter=exporter,
                stop=asyncio.Event(),
                metrics=Metrics(),
                dead_letter=DeadLetter(tmp_path / "dead.jsonl"),
                deadline_seconds=10,
            )
            summary = asyncio.run(
                export_file(
                    path,
                    shipper=shipper,
                    convert_options=wiring.convert_options(settings),
                    resource=wiring.resource(settings),
                )
            )
        finally:
            exporter.shutdown()
        assert rx.wait_idle()
        _assert_compactions_alone(rx)
        runs = run_spans(rx)
        spans = rx.spans()
    assert summary.exported == len(lines)
    # A compaction with its agent hangs under the run, which says what the calls said.
    compacted = runs["run-18818a2f-448b-4dfd-a407-8dd0d4f953bf"]
    c = compacted.attributes
    assert compacted.name == "invoke_agent agent-7181c5b1-0628-42c5-b995-1222a9d3efd6"
    assert c["gen_ai.provider.name"] == "openai"
    assert c["gen_ai.request.model"] == "gpt-4o-mini"
    assert c["user.id"] == rows[0]["user_id"]
    assert c["letta.run.step_count"] == 2
    children = [s for s in spans if s.span.parent_span_id.hex() == compacted.span_id]
    assert sorted(s.attributes.get("letta.summarization", False) for s in children) == [
        False,
        True,
    ]
    assert c["output.value"]  # the agent call's answer, not the summary
    assert not c["output.value"].startswith("Summary:")


def test_run_summary_survives_a_restart_of_the_sidecar(tmp_path):
    """A run whose calls were delivered before a restart still gets its input, answer and
    error from them: the summary is kept in the checkpoint's open runs."""
    store = LettaStore.from_fixtures(LETTA)
    run_id = "run-d1236e24-e8c8-4512-b21d-4b2c0e9d96da"
    store.set_run_status(run_id, "running")  # not due: stays open across the restart

    async def one_pass(settings: Settings) -> None:
        async with make_worker(settings, one_shot=False) as worker:
            await worker.run_pass()

    with FakeLetta(store) as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path, content="full")
        asyncio.run(one_pass(settings))
        assert rx.wait_idle()
        assert run_id not in run_spans(rx)
        saved = json.loads(Path(settings.state_path).read_text())
        (stream,) = saved["streams"].values()
        kept = stream["open_runs"][run_id]["summary"]
        assert kept["calls"] == 2
        assert kept["output_text"] == "Noted. I will remember that for later."

        store.set_run_status(run_id, "completed")
        asyncio.run(one_pass(settings))  # a new process: only the checkpoint remembers
        assert rx.wait_idle()
        span = run_spans(rx)[run_id]
    assert span.attributes["output.value"] == "Noted. I will remember that for later."
    assert span.attributes["input.value"].startswith("What did I tell you about drinks earlier?")
