"""README.md lists every attribute the converter sets (checked on rich records)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.convert import (
    ConvertOptions,
    RunSummary,
    TraceContext,
    build_resource,
    convert_run,
    convert_trace,
    parse_prices,
)
from exporter.models import (
    Agent,
    BillingContext,
    ProviderTrace,
    Run,
    Step,
    StepMetrics,
    parse_record,
    parse_trace_body,
)
from tests.conftest import LETTA
from tests.test_convert_bodies import (
    GEMINI_REQUEST,
    GEMINI_RESPONSE,
    RESPONSES_REQUEST,
    RESPONSES_RESPONSE,
)

DOC = Path(__file__).parent.parent / "README.md"
RESOURCE = build_resource()
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def span_reference() -> str:
    """The README's span reference: from its heading to the next top-level section."""
    text = DOC.read_text()
    start = text.index("## Span reference")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def documented() -> tuple[set[str], tuple[str, ...]]:
    names = set(
        re.findall(
            r"`((?:gen_ai|letta|openai|server|error|input|output|session|user|llm)\.[a-z0-9_.<>]+)`",
            span_reference(),
        )
    )
    exact = {n for n in names if "<" not in n}
    prefixes = tuple(n.split("<")[0] for n in names if "<" in n)
    return exact, prefixes


def rich_context() -> TraceContext:
    step = Step(
        id="step-1",
        origin="api",
        organization_id="org-1",
        provider_id="p-1",
        run_id="run-1",
        agent_id="agent-1",
        provider_name="openai",
        provider_category="base",
        model="gpt",
        model_handle="h/gpt",
        model_endpoint="https://api.openai.com/v1",
        context_window_limit=1000,
        completion_tokens=1,
        prompt_tokens=2,
        total_tokens=3,
        cached_input_tokens=1,
        cache_write_tokens=0,
        reasoning_tokens=0,
        completion_tokens_details={"reasoning_tokens": 0},
        prompt_tokens_details={"cached_tokens": 1},
        stop_reason="end_turn",
        status="failed",
        error_type="E",
        error_data={"message": "m"},
        tags=["t"],
        tid="tid",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        request_id="r",
        feedback="positive",
        project_id="proj",
    )
    metrics = StepMetrics(
        id="step-1",
        step_start_ns=1,
        llm_request_start_ns=2,
        llm_request_ns=3,
        tool_execution_ns=4,
        step_ns=5,
        template_id="tpl",
        base_template_id="btpl",
    )
    agent = Agent(
        id="agent-1", name="bot", tags=["x"], agent_type="letta_v1_agent", project_id="proj"
    )
    run = Run(id="run-1", conversation_id="conv")
    return TraceContext(step=step, metrics=metrics, run=run, agent=agent)


def spans():
    traces = [
        parse_trace_body(p.read_bytes())
        for p in sorted((LETTA / "traces").glob("*.json"))
        if "database" not in p.name
    ]
    traces += [
        ProviderTrace(
            request_json=RESPONSES_REQUEST,
            response_json=RESPONSES_RESPONSE,
            created_at=T0,
            llm_config={"model_endpoint_type": "openai"},
            latency_ms=5,
            billing_context=BillingContext(
                plan_type="p", cost_source="c", customer_id="u", more="m"
            ),
            compaction_settings={"mode": "x"},
            unknown_field=1,
        ),
        ProviderTrace(
            request_json={**GEMINI_REQUEST, "stream": True},
            response_json=GEMINI_RESPONSE,
            created_at=T0,
        ),
        ProviderTrace(
            request_json={
                "messages": [],
                "n": 2,
                "seed": 1,
                "service_tier": "flex",
                "top_p": 1,
                "frequency_penalty": 0,
                "presence_penalty": 0,
                "stop": ["s"],
                "response_format": {"type": "text"},
            },
            response_json={"choices": [], "usage": {"prompt_tokens": "x"}},
            created_at=T0,
            llm_config={"model_endpoint_type": "openai", "m": "é" * 50000},
        ),
    ]
    for trace in traces:
        for mode in ("none", "full", "raw"):
            for join in (False, True):
                opts = ConvertOptions(content=mode, join_letta_traces=join, content_max_bytes=200)
                yield convert_trace(trace, rich_context(), options=opts, resource=RESOURCE)
    agent = Agent(
        id="agent-1",
        name="bot",
        tags=["x"],
        agent_type="t",
        project_id="p",
        description="d",
        llm_config={"model": "gpt", "model_endpoint_type": "openai"},
    )
    run = Run(
        id="run-1",
        status="failed",
        agent_id="agent-1",
        created_at=T0,
        completed_at=T0,
        conversation_id="c",
        base_template_id="b",
        background=True,
        metadata={"error": "X: y"},
        request_config={"a": 1},
        stop_reason="error",
        ttft_ns=1,
        total_duration_ns=2,
        callback_url="u",
    )
    yield convert_run(run, agent=agent, step_count=2, resource=RESOURCE)
    yield convert_run(Run(id="r"), resource=RESOURCE)
    summary = RunSummary(
        input_text="hi",
        output_text="bye",
        failed_calls=1,
        last_failed=True,
        last_error_type="E",
        last_error_message="m",
        agent_id="agent-1",
        provider="openai",
        model="gpt",
        user_id="u",
    )
    for mode in ("none", "full", "raw"):
        yield convert_run(
            Run(id="r2", stop_reason="error", conversation_id="c"),
            summary=summary,
            options=ConvertOptions(content=mode),
            resource=RESOURCE,
        )
    rows = json.loads((LETTA / "traces" / "summarization_traces_from_database.json").read_bytes())
    prices = parse_prices('[models."gpt-4.1"]\ninput = 1\noutput = 2')
    for row in rows["rows"]:
        trace = parse_record(ProviderTrace, json.dumps(row))
        for mode in ("none", "full", "raw"):
            opts = ConvertOptions(content=mode, prices=prices)
            yield convert_trace(trace, options=opts, resource=RESOURCE)


def test_every_emitted_attribute_is_documented():
    exact, prefixes = documented()
    missing = set()
    for span in spans():
        for key in span.attributes:
            if key not in exact and not key.startswith(prefixes):
                missing.add(key)
    assert not missing, sorted(missing)


def test_every_documented_attribute_exists_in_the_code():
    exporter = Path(__file__).parent.parent / "exporter"
    source = "\n".join(p.read_text() for p in (exporter / "convert").glob("*.py"))
    # The GenAI metrics section names metrics, not span attributes: those are checked against
    # the metrics module, where they are defined whole.
    metric_names = (exporter / "genai_metrics" / "_names.py").read_text()
    exact, prefixes = documented()
    for name in exact:
        if f'"{name}"' in metric_names:
            continue
        suffix = name.split(".")[-1]
        assert suffix in source, name
    assert prefixes


@pytest.mark.parametrize(
    "key",
    [
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.provider.name",
        "letta.convert.warnings",
        "letta.duration.source",
    ],
)
def test_doc_mentions_core_names(key):
    assert f"`{key}`" in DOC.read_text()


def test_spans_from_rich_records_are_serialisable():
    for span in spans():
        json.loads(span.to_json())


def test_the_rich_records_exercise_the_viewer_attributes():
    emitted = {key for span in spans() for key in span.attributes}
    assert {
        "input.value",
        "input.mime_type",
        "output.value",
        "output.mime_type",
        "session.id",
        "user.id",
        "gen_ai.usage.cost",
        "llm.cost.total",
        "letta.cost.source",
        "letta.summarization",
        "letta.run.failed_calls",
    } <= emitted
