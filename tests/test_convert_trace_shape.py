"""Ids, trace shape (run parent, own traces, joining Letta's traces), timing, resource and scope."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

import exporter
from exporter.convert import (
    SCHEMA_URL,
    SCOPE,
    ConvertOptions,
    TraceContext,
    build_resource,
    convert_run,
    convert_trace,
    run_span_id_for,
    span_id_for,
    trace_id_for_run,
)
from exporter.models import (
    Agent,
    ProviderTrace,
    Run,
    Step,
    StepMetrics,
    parse_record,
    parse_records,
)
from tests.conftest import LETTA

RESOURCE = build_resource()
RUN_ID = "run-36d2c5d1-ab84-4c5a-a84e-d75dab01bece"
RUN_UUID = 0x36D2C5D1AB844C5AA84ED75DAB01BECE
T0 = datetime(2026, 11, 21, 8, 29, 8, 773294, tzinfo=UTC)
T0_NS = 1795249748773294000  # 2026-11-21T08:29:08.773294Z


def trace(**fields) -> ProviderTrace:
    base = {
        "id": "provider_trace-11111111-2222-4333-8444-555555555555",
        "request_json": {"model": "gpt-4o"},
        "response_json": {},
        "created_at": T0,
    }
    return ProviderTrace(**{**base, **fields})


def the_run() -> Run:
    return parse_record(Run, (LETTA / "runs" / "run_retrieve_example.json").read_bytes())


# --- ids -------------------------------------------------------------------------------------
def test_trace_id_is_the_run_uuid():
    assert trace_id_for_run(RUN_ID) == RUN_UUID
    assert trace_id_for_run("36d2c5d1-ab84-4c5a-a84e-d75dab01bece") == RUN_UUID


@pytest.mark.parametrize(
    "run_id", ["run_id", "run-not-a-uuid", "", "run-00000000-0000-0000-0000-000000000000", "é"]
)
def test_non_uuid_run_ids_hash_to_a_stable_nonzero_id(run_id):
    value = trace_id_for_run(run_id)
    assert 0 < value < 2**128
    assert trace_id_for_run(run_id) == value
    assert value != trace_id_for_run(run_id + "x")


def test_span_ids_are_stable_nonzero_and_never_collide_with_run_spans():
    ids = [f"provider_trace-{i:08x}" for i in range(2000)]
    span_ids = {span_id_for(i) for i in ids}
    assert len(span_ids) == len(ids)
    assert all(0 < s < 2**63 for s in span_ids)  # top bit clear
    assert span_id_for(ids[0]) == span_id_for(ids[0])
    run_ids = {run_span_id_for(f"run-{i}") for i in range(2000)}
    assert all(2**63 <= r < 2**64 for r in run_ids)  # top bit set
    assert not span_ids & run_ids
    assert run_span_id_for(RUN_ID) != span_id_for(RUN_ID)


def test_exporting_twice_yields_the_same_span():
    a = convert_trace(trace(run_id=RUN_ID), resource=RESOURCE)
    b = convert_trace(trace(run_id=RUN_ID), resource=RESOURCE)
    assert a.context == b.context
    assert a.parent == b.parent
    assert dict(a.attributes) == dict(b.attributes)


# --- trace shape -----------------------------------------------------------------------------
def test_llm_span_parent_is_the_run_span():
    run = the_run()
    llm = convert_trace(trace(run_id=RUN_ID), resource=RESOURCE)
    parent = convert_run(run, resource=RESOURCE)
    assert llm.parent == parent.context
    assert llm.parent.is_remote is False
    assert llm.context.trace_id == parent.context.trace_id == RUN_UUID
    assert parent.parent is None
    assert parent.context.span_id == run_span_id_for(RUN_ID)


def test_run_id_from_the_step_when_the_trace_has_none():
    step = Step(id="step-a", run_id=RUN_ID)
    span = convert_trace(
        trace(run_id=None, step_id=None), TraceContext(step=step), resource=RESOURCE
    )
    assert span.context.trace_id == RUN_UUID
    assert span.parent.span_id == run_span_id_for(RUN_ID)
    assert span.attributes["letta.run.id"] == RUN_ID
    assert span.attributes["letta.step.id"] == "step-a"


def test_trace_without_run_gets_its_own_trace_from_the_step_id():
    a = convert_trace(trace(step_id="step-x", run_id=None), resource=RESOURCE)
    b = convert_trace(
        trace(
            id="provider_trace-99999999-2222-4333-8444-555555555555", step_id="step-x", run_id=None
        ),
        resource=RESOURCE,
    )
    c = convert_trace(trace(step_id="step-y", run_id=None), resource=RESOURCE)
    assert a.parent is None
    assert b.parent is None
    assert a.context.trace_id == b.context.trace_id != c.context.trace_id
    assert a.context.span_id != b.context.span_id
    assert "letta.run.id" not in a.attributes


def test_trace_without_run_or_step_uses_its_own_id():
    a = convert_trace(trace(run_id=None), resource=RESOURCE)
    b = convert_trace(
        trace(run_id=None, id="provider_trace-aaaaaaaa-2222-4333-8444-555555555555"),
        resource=RESOURCE,
    )
    assert a.parent is None
    assert a.context.trace_id != b.context.trace_id


def test_trace_without_id_still_gets_a_deterministic_span_id():
    t = trace(id=None, step_id="step-z", run_id=RUN_ID)
    a, b = convert_trace(t, resource=RESOURCE), convert_trace(t, resource=RESOURCE)
    assert a.context.span_id == b.context.span_id != 0
    assert any("id: missing" in w for w in a.attributes["letta.convert.warnings"])


LETTA_TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_join_letta_traces_makes_the_span_a_root_in_lettas_trace_linked_to_the_run():
    step = Step(id="step-j", run_id=RUN_ID, trace_id=LETTA_TRACE)
    span = convert_trace(
        trace(run_id=RUN_ID),
        TraceContext(step=step),
        options=ConvertOptions(join_letta_traces=True),
        resource=RESOURCE,
    )
    assert span.context.trace_id == int(LETTA_TRACE, 16)
    assert span.parent is None
    (link,) = span.links
    assert link.context.trace_id == RUN_UUID
    assert link.context.span_id == run_span_id_for(RUN_ID)
    assert link.attributes["letta.link.kind"] == "run"
    assert span.attributes["letta.run.trace_id"] == f"{RUN_UUID:032x}"
    assert span.attributes["letta.run.span_id"] == f"{run_span_id_for(RUN_ID):016x}"
    assert span.attributes["letta.step.trace_id"] == LETTA_TRACE


@pytest.mark.parametrize(
    ("join", "letta_trace"),
    [(False, LETTA_TRACE), (True, None), (True, "xyz"), (True, "0" * 32), (True, "0x" + "1" * 30)],
)
def test_join_falls_back_to_the_run_trace(join, letta_trace):
    step = Step(id="step-j", run_id=RUN_ID, trace_id=letta_trace)
    span = convert_trace(
        trace(run_id=RUN_ID),
        TraceContext(step=step),
        options=ConvertOptions(join_letta_traces=join),
        resource=RESOURCE,
    )
    assert span.context.trace_id == RUN_UUID
    assert span.parent.span_id == run_span_id_for(RUN_ID)
    assert not span.links


# --- the run span ----------------------------------------------------------------------------
def test_run_span_from_the_recorded_run():
    run = the_run()
    agent = Agent(
        id="agent-d027b87e-6c15-4e07-a892-d15d95d77843",
        name="support-bot",
        tags=["team:support"],
        agent_type="letta_v1_agent",
        description="Helps customers",
        llm_config={"model": "gpt-4o-mini", "model_endpoint_type": "openai"},
    )
    first, last = T0_NS - 288996720, T0_NS
    span = convert_run(
        run, agent=agent, first_start_ns=first, last_end_ns=last, step_count=1, resource=RESOURCE
    )
    a = span.attributes
    assert span.name == "invoke_agent support-bot"
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET
    # created 08:29:08.393934Z < first LLM start; completed 08:29:08.885242 (naive = UTC) > last end
    assert span.start_time == 1795249748393934000
    assert span.end_time == 1795249748885242000
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.id"] == "agent-d027b87e-6c15-4e07-a892-d15d95d77843"
    assert a["gen_ai.agent.name"] == "support-bot"
    assert a["gen_ai.agent.description"] == "Helps customers"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    # conversation_id is null on this run: the agent's runs share one session
    assert a["gen_ai.conversation.id"] == "agent-d027b87e-6c15-4e07-a892-d15d95d77843"
    assert a["session.id"] == "agent-d027b87e-6c15-4e07-a892-d15d95d77843"
    assert a["letta.run.id"] == RUN_ID
    assert a["letta.run.status"] == "completed"
    assert a["letta.run.stop_reason"] == "end_turn"
    assert a["letta.run.step_count"] == 1
    assert a["letta.run.created_at"] == "2026-11-21T08:29:08.393934+00:00"
    assert a["letta.run.completed_at"] == "2026-11-21T08:29:08.885242+00:00"
    assert a["letta.run.metadata.run_type"] == "send_message"
    assert a["letta.run.request_config.assistant_message_tool_name"] == "send_message"
    assert a["letta.run.background"] is False
    assert a["letta.agent.type"] == "letta_v1_agent"
    assert a["letta.agent.tags"] == ("team:support",)


def test_run_span_widens_to_cover_its_llm_spans():
    run = the_run()
    early, late = 1795249748000000000, 1795249750000000000
    span = convert_run(run, first_start_ns=early, last_end_ns=late, resource=RESOURCE)
    assert (span.start_time, span.end_time) == (early, late)
    assert span.name == "invoke_agent agent-d027b87e-6c15-4e07-a892-d15d95d77843"


def test_failed_run_is_an_error():
    runs = parse_records(Run, (LETTA / "runs" / "runs_list_page1.json").read_bytes())
    failed = next(r for r in runs if r.id == "run-5d1183bb-6fd4-4d01-92f8-54c4de2c8dc1")
    span = convert_run(failed, resource=RESOURCE)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith("RATE_LIMIT_EXCEEDED: Rate limited by OpenAI")
    assert span.attributes["error.type"] == "RATE_LIMIT_EXCEEDED"
    assert span.attributes["letta.run.status"] == "failed"


def test_run_without_times_or_agent():
    run = Run(id="weird-run", status="running", conversation_id="conv-7")
    span = convert_run(run, resource=RESOURCE)
    assert span.name == "invoke_agent"
    assert span.start_time == span.end_time == 0
    assert span.attributes["gen_ai.conversation.id"] == "conv-7"
    assert span.attributes["letta.convert.warnings"]
    assert span.context.trace_id == trace_id_for_run("weird-run")
    only_end = convert_run(run, last_end_ns=T0_NS, resource=RESOURCE)
    assert only_end.start_time == only_end.end_time == T0_NS


def test_conversation_id_on_the_llm_span_from_the_run():
    run = Run(id=RUN_ID, conversation_id="conv-42")
    span = convert_trace(
        trace(run_id=RUN_ID),
        TraceContext(run=run, agent=Agent(id="a", name="bob")),
        resource=RESOURCE,
    )
    assert span.attributes["gen_ai.conversation.id"] == "conv-42"
    assert span.attributes["gen_ai.agent.name"] == "bob"


# --- timing ----------------------------------------------------------------------------------
def test_metrics_absolute_start_wins_over_created_at_when_no_latency():
    metrics = StepMetrics(id="s", llm_request_start_ns=T0_NS - 5_000, llm_request_ns=3_000)
    span = convert_trace(trace(), TraceContext(metrics=metrics), resource=RESOURCE)
    assert (span.start_time, span.end_time) == (T0_NS - 5_000, T0_NS - 2_000)
    assert span.attributes["letta.duration.source"] == "step_metrics.llm_request_start_ns"
    no_duration = convert_trace(
        trace(),
        TraceContext(metrics=StepMetrics(id="s", llm_request_start_ns=T0_NS - 5_000)),
        resource=RESOURCE,
    )
    assert (no_duration.start_time, no_duration.end_time) == (T0_NS - 5_000, T0_NS)


def test_duration_only_ends_at_created_at():
    span = convert_trace(
        trace(),
        TraceContext(metrics=StepMetrics(id="s", llm_request_ns=1_000_000)),
        resource=RESOURCE,
    )
    assert (span.start_time, span.end_time) == (T0_NS - 1_000_000, T0_NS)
    assert span.attributes["letta.duration.source"] == "step_metrics.llm_request_ns"


def test_latency_without_created_at_uses_the_metrics_start():
    metrics = StepMetrics(id="s", llm_request_start_ns=T0_NS)
    span = convert_trace(
        trace(created_at=None, latency_ms=250), TraceContext(metrics=metrics), resource=RESOURCE
    )
    assert (span.start_time, span.end_time) == (T0_NS, T0_NS + 250_000_000)
    assert span.attributes["letta.duration.source"] == "latency_ms"
    assert span.attributes["letta.timestamp.source"] == "step_metrics.llm_request_start_ns"


def test_no_created_at_falls_back_to_updated_at_and_says_so():
    span = convert_trace(
        trace(created_at=None, updated_at=T0),
        TraceContext(metrics=StepMetrics(id="s", llm_request_ns=10)),
        resource=RESOURCE,
    )
    assert (span.start_time, span.end_time) == (T0_NS - 10, T0_NS)
    assert span.attributes["letta.timestamp.source"] == "updated_at"


def test_no_time_at_all_is_a_zero_span_with_a_warning():
    span = convert_trace(trace(created_at=None), resource=RESOURCE)
    assert span.start_time == span.end_time == 0
    assert span.attributes["letta.duration.source"] == "none"
    assert span.attributes["letta.timestamp.source"] == "none"
    assert any("timing" in w for w in span.attributes["letta.convert.warnings"])


def test_naive_and_offset_datetimes():
    naive = convert_trace(
        trace(created_at=datetime(2026, 11, 21, 8, 29, 8, 773294)), resource=RESOURCE
    )
    assert naive.end_time == T0_NS
    offset = ProviderTrace.model_validate_json(
        json.dumps(
            {
                "request_json": {},
                "response_json": {},
                "created_at": "2026-11-21T10:29:08.773294+02:00",
            }
        )
    )
    assert convert_trace(offset, resource=RESOURCE).end_time == T0_NS


@pytest.mark.parametrize("latency", [-5, 2**62])
def test_unusable_latency_is_reported_and_the_span_stays_sane(latency):
    span = convert_trace(trace(latency_ms=latency), resource=RESOURCE)
    assert 0 <= span.start_time <= span.end_time == T0_NS
    assert span.attributes["letta.convert.warnings"]


def test_ancient_timestamps_are_clamped():
    span = convert_trace(
        trace(created_at=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), latency_ms=5000),
        resource=RESOURCE,
    )
    assert span.start_time == 0
    assert span.end_time == 1_000_000_000
    before_epoch = convert_trace(
        trace(created_at=datetime(1960, 1, 1, tzinfo=UTC)), resource=RESOURCE
    )
    assert before_epoch.start_time == before_epoch.end_time == 0


# --- resource and scope ----------------------------------------------------------------------
def test_resource_defaults():
    resource = build_resource()
    assert resource.attributes["service.name"] == "letta"
    assert resource.attributes["telemetry.sdk.language"] == "python"
    assert resource.attributes["telemetry.sdk.name"] == "opentelemetry"
    assert resource.attributes["telemetry.sdk.version"]
    assert resource.schema_url == SCHEMA_URL


def test_resource_attributes_and_service_name_argument_wins(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "from.env=1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-name")
    resource = build_resource(
        "letta-prod", {"service.name": "ignored", "deployment.environment.name": "prod"}
    )
    assert resource.attributes["service.name"] == "letta-prod"
    assert resource.attributes["deployment.environment.name"] == "prod"
    assert "from.env" not in resource.attributes  # the environment is the caller's to read


def test_scope():
    span = convert_trace(trace(), resource=RESOURCE)
    assert span.instrumentation_scope == SCOPE
    assert SCOPE.name == "letta-otel-exporter"
    assert SCOPE.version == exporter.__version__
    assert SCOPE.schema_url == SCHEMA_URL == "https://opentelemetry.io/schemas/1.41.1"
    assert span.resource is RESOURCE
    assert convert_run(the_run(), resource=RESOURCE).instrumentation_scope == SCOPE


def test_convert_package_is_pure():
    """No I/O, logging, clock or environment access: checked on the imports of every module."""
    forbidden = {
        "os",
        "logging",
        "time",
        "httpx",
        "grpc",
        "requests",
        "socket",
        "io",
        "pathlib",
        "subprocess",
    }
    package = Path(exporter.__file__).parent / "convert"
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, (module.name, name)
        assert "datetime.now" not in module.read_text()
        assert "open(" not in module.read_text()


def test_a_bug_inside_the_converter_still_yields_a_span(monkeypatch):
    import exporter.convert._spans as spans_module

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(spans_module, "read_response", broken)
    monkeypatch.setattr(spans_module, "run_timing", broken)
    span = convert_trace(trace(run_id=RUN_ID), resource=RESOURCE)
    assert span.attributes["letta.convert.warnings"] == (
        "internal error converting this trace: RuntimeError",
    )
    assert span.context.trace_id == RUN_UUID
    assert span.parent.span_id == run_span_id_for(RUN_ID)
    assert span.end_time == T0_NS
    run_span = convert_run(the_run(), resource=RESOURCE)
    assert run_span.context.span_id == run_span_id_for(RUN_ID)
    assert run_span.attributes["letta.convert.warnings"] == (
        "internal error converting this run: RuntimeError",
    )
