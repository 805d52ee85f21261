"""Every recorded response parses; wrong types are clear errors naming the record and field."""

from __future__ import annotations

import json
from datetime import UTC

import pytest

from exporter.errors import RecordInvalidError
from exporter.models import (
    ProviderTrace,
    Run,
    RunMetrics,
    Step,
    StepMetrics,
    parse_record,
    parse_records,
    parse_trace_body,
)
from tests.conftest import CLOUD, LETTA

TRACE_FILES = sorted(p for p in (LETTA / "traces").glob("*.json") if "database" not in p.name)
STEP_FILES = sorted((LETTA / "steps").glob("*.json"))
RUN_STEP_FILES = sorted((LETTA / "runs" / "run_steps").glob("*.json"))


@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.name)
def test_recorded_traces_parse_from_bytes(path):
    raw = path.read_bytes()
    trace = parse_trace_body(raw)
    assert trace is not None
    assert trace.id == json.loads(raw)["id"]
    assert trace.created_at is not None
    assert trace.created_at.tzinfo is not None
    # Self-hosted 0.16.8 sends neither latency nor billing context.
    assert trace.latency_ms is None
    assert trace.billing_context is None


@pytest.mark.parametrize("path", sorted(CLOUD.glob("*.json")), ids=lambda p: p.name)
def test_cloud_shape_traces_carry_latency_and_billing(path):
    trace = parse_record(ProviderTrace, path.read_bytes())
    assert trace.latency_ms is not None
    assert trace.billing_context is not None
    assert trace.billing_context.plan_type


def test_summarization_rows_parse():
    rows = json.loads((LETTA / "traces" / "summarization_traces_from_database.json").read_bytes())
    for row in rows["rows"]:
        trace = parse_record(ProviderTrace, json.dumps(row))
        assert trace.call_type == "summarization"
        assert trace.compaction_settings is not None


@pytest.mark.parametrize("path", STEP_FILES, ids=lambda p: p.name)
def test_recorded_steps_parse(path):
    data = json.loads(path.read_bytes())
    step = parse_record(Step, json.dumps(data["step"]))
    assert step.id == path.stem
    parse_record(StepMetrics, json.dumps(data["metrics"]))
    trace = parse_trace_body(json.dumps(data["trace"]))
    assert trace is None or trace.step_id == step.id


@pytest.mark.parametrize("path", RUN_STEP_FILES, ids=lambda p: p.name)
def test_run_steps_pages_parse(path):
    steps = parse_records(Step, path.read_bytes())
    assert all(s.run_id == path.stem for s in steps)


def test_runs_pages_parse_and_naive_times_are_utc():
    for name in ("runs_list_page1.json", "runs_list_page2.json"):
        runs = parse_records(Run, (LETTA / "runs" / name).read_bytes())
        assert runs
        for run in runs:
            assert run.completed_at is None or run.completed_at.tzinfo == UTC
    run = parse_record(Run, (LETTA / "runs" / "run_retrieve_example.json").read_bytes())
    assert run.is_finished
    metrics = parse_record(RunMetrics, (LETTA / "runs" / "run_metrics_example.json").read_bytes())
    assert metrics.run_start_ns
    assert metrics.run_ns


def test_null_trace_body_means_no_trace():
    assert parse_trace_body(b"null") is None


def test_unknown_fields_are_kept_for_the_converter():
    trace = parse_record(
        ProviderTrace, b'{"request_json": {}, "response_json": {}, "cost_usd": 0.12}'
    )
    assert trace.model_extra == {"cost_usd": 0.12}


def test_wrong_type_names_the_trace_and_the_field():
    raw = (
        b'{"id": "provider_trace-11d1cbfe-8b93-47b4-a12c-36d8feb6b008", "request_json": {},'
        b' "response_json": {}, "latency_ms": "slow"}'
    )
    with pytest.raises(RecordInvalidError) as info:
        parse_trace_body(raw)
    assert info.value.record_id == "provider_trace-11d1cbfe-8b93-47b4-a12c-36d8feb6b008"
    assert info.value.field == "latency_ms"
    assert "provider_trace-11d1cbfe" in str(info.value)
    assert "latency_ms" in str(info.value)


def test_bad_id_pattern_and_missing_bodies_are_errors():
    with pytest.raises(RecordInvalidError, match="'id'"):
        parse_record(ProviderTrace, b'{"id": "trace-1", "request_json": {}, "response_json": {}}')
    with pytest.raises(RecordInvalidError, match="response_json"):
        parse_record(ProviderTrace, b'{"id": "provider_trace-12345678", "request_json": {}}')


def test_list_error_names_the_failing_item():
    with pytest.raises(RecordInvalidError) as info:
        parse_records(Step, b'[{"id": "step-a"}, {"id": "step-b", "tags": "x"}]')
    assert info.value.record_id == "step-b"
    assert info.value.field == "tags"


def test_invalid_json_is_a_clear_error():
    with pytest.raises(RecordInvalidError, match="not valid JSON"):
        parse_trace_body(b"{nope")
