"""A socket record makes the span the API path makes for the same trace (api_view.json)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.convert import TraceContext, build_resource, convert_trace, trace_id_for_run
from exporter.models import ProviderTrace, Step, StepMetrics
from exporter.source._socket_record import parse_socket_record

from .conftest import LETTA

SOCKET = LETTA / "socket"
RESOURCE = build_resource()

#: What only the API's step and metrics give a span (the record carries neither).
FROM_STEP_OR_METRICS = frozenset(
    {
        "letta.step.cached_input_tokens",
        "letta.step.completion_tokens",
        "letta.step.completion_tokens_details.reasoning_tokens",
        "letta.step.context_window_limit",
        "letta.step.error.message",
        "letta.step.error_type",
        "letta.step.llm_request_ns",
        "letta.step.model",
        "letta.step.model_endpoint",
        "letta.step.model_handle",
        "letta.step.organization_id",
        "letta.step.prompt_tokens",
        "letta.step.prompt_tokens_details.cache_creation_tokens",
        "letta.step.prompt_tokens_details.cache_read_tokens",
        "letta.step.prompt_tokens_details.cached_tokens",
        "letta.step.provider_category",
        "letta.step.provider_name",
        "letta.step.status",
        "letta.step.step_ns",
        "letta.step.stop_reason",
        "letta.step.tags",
        "letta.step.tool_execution_ns",
        "letta.step.total_tokens",
    }
)
#: ProviderTrace fields the API returns and the record does not carry.
FROM_API_ROW_ONLY = frozenset(
    {"letta.created_by_id", "letta.last_updated_by_id", "letta.provider_trace.updated_at"}
)
#: The record's ``timestamp`` stands for ``created_at``: sent 2 to 9 ms after the row's.
DIFFERENT_VALUE = frozenset({"letta.provider_trace.created_at"})
#: Where the duration came from: the step's metrics on the API path, none from a record alone.
DURATION_SOURCE = "letta.duration.source"


def records() -> list[tuple[dict[str, Any], bytes]]:
    lines = [line for line in SOCKET.joinpath("records.ndjson").read_bytes().splitlines() if line]
    return [(json.loads(line), line) for line in lines]


API = json.loads(SOCKET.joinpath("api_view.json").read_text())
WITH_API_TRACE = [
    (record, line)
    for record, line in records()
    if record["step_id"] in API and API[record["step_id"]]["trace"] is not None
]

IDS = [record["provider_trace_id"][-12:] for record, _ in WITH_API_TRACE]


def api_span(record: dict[str, Any], *, context: bool) -> Any:
    view = API[record["step_id"]]
    trace = ProviderTrace.model_validate(view["trace"])
    ctx = (
        TraceContext(
            step=Step.model_validate(view["step"]),
            metrics=StepMetrics.model_validate(view["metrics"]),
        )
        if context
        else TraceContext()
    )
    return convert_trace(trace, ctx, resource=RESOURCE)


def socket_span(line: bytes) -> Any:
    trace, version = parse_socket_record(line)
    assert version == 3
    return convert_trace(trace, TraceContext(), resource=RESOURCE)


def test_seven_records_have_an_api_trace() -> None:
    assert len(WITH_API_TRACE) == 7


@pytest.mark.parametrize(("record", "line"), WITH_API_TRACE, ids=IDS)
def test_same_ids_name_and_attributes_as_the_api_path(record: dict[str, Any], line: bytes) -> None:
    ours, theirs = socket_span(line), api_span(record, context=True)
    assert ours.context.span_id == theirs.context.span_id
    assert ours.context.trace_id == theirs.context.trace_id == trace_id_for_run(record["run_id"])
    assert ours.parent == theirs.parent
    assert ours.name == theirs.name
    assert ours.kind == theirs.kind
    assert ours.status.status_code == theirs.status.status_code
    mine, api = dict(ours.attributes), dict(theirs.attributes)
    assert set(mine) == set(api) - FROM_STEP_OR_METRICS - FROM_API_ROW_ONLY
    gen_ai = {k for k in api if k.startswith(("gen_ai.", "error."))}
    assert gen_ai
    assert {k: mine[k] for k in gen_ai} == {k: api[k] for k in gen_ai}
    assert mine[DURATION_SOURCE] == "none"  # a record alone carries no duration
    same = set(mine) - DIFFERENT_VALUE - {DURATION_SOURCE}
    assert {k: mine[k] for k in same} == {k: api[k] for k in same}


@pytest.mark.parametrize(("record", "line"), WITH_API_TRACE, ids=IDS)
def test_against_the_api_trace_alone_only_the_row_fields_differ(
    record: dict[str, Any], line: bytes
) -> None:
    mine, api = dict(socket_span(line).attributes), dict(api_span(record, context=False).attributes)
    differing = {k for k in set(mine) | set(api) if mine.get(k) != api.get(k)}
    assert differing == FROM_API_ROW_ONLY | DIFFERENT_VALUE


def test_summarizations_with_and_without_a_step_become_spans() -> None:
    summaries = [(r, line) for r, line in records() if r["type"] == "summarization"]
    assert len(summaries) == 2
    spans = [socket_span(line) for _, line in summaries]
    with_step, without = summaries[0][0], summaries[1][0]
    assert with_step["step_id"] is not None
    assert without["step_id"] is None
    assert without["run_id"] is None
    assert spans[0].context.trace_id == trace_id_for_run(with_step["run_id"])
    assert spans[1].context.trace_id != 0
    compacted = [r for r, _ in records() if r["step_id"] == with_step["step_id"]]
    assert {r["type"] for r in compacted} == {"agent_step", "summarization"}
    ids = {socket_span(line).context.span_id for r, line in records() if r in compacted}
    assert len(ids) == 2  # both traces of the compacted step, which the API answers null for
    assert API[with_step["step_id"]]["trace"] is None
