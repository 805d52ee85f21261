"""GenAI metrics: what arrives at a real OTLP receiver, counted once, and a backend without them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.genai_metrics import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    CountedLedger,
    GenAIMetrics,
    measure_span,
    metrics_url,
    span_key,
)
from testkit import OtlpReceiver
from testkit.otlp_receiver import ReceivedPoint
from tests._metric_spans import RESOURCE, call_span, span_of, trace_of

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ["grpc", "http/protobuf"]


@pytest.fixture
def receiver():
    with OtlpReceiver() as r:
        yield r


def endpoint(receiver: OtlpReceiver, protocol: str) -> str:
    return receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint


def metrics_for(receiver: OtlpReceiver, protocol: str, **kwargs) -> GenAIMetrics:
    return GenAIMetrics.from_config(
        endpoint=endpoint(receiver, protocol), protocol=protocol, resource=RESOURCE, **kwargs
    )


def matching(points: list[ReceivedPoint], **attributes) -> list[ReceivedPoint]:
    found = [p for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert found, f"no point with {attributes} in {[p.attributes for p in points]}"
    return found


def first(points: list[ReceivedPoint], **attributes) -> ReceivedPoint:
    """The first export's point whose attributes include ``attributes`` (it has the exemplars:
    an exemplar goes out with the export that follows its measurement, once)."""
    return matching(points, **attributes)[0]


def latest(points: list[ReceivedPoint], **attributes) -> ReceivedPoint:
    """The last point whose attributes include ``attributes``."""
    return matching(points, **attributes)[-1]


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_arrive_with_the_conventions_values_attributes_and_exemplars(receiver, protocol):
    failed = call_span(
        2,
        seconds=0.05,
        extra={"error.type": "500"},
        drop=("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"),
    )
    priced = call_span(1, extra={"gen_ai.usage.cost": 0.25})
    run = call_span(3, operation="invoke_agent")
    metrics = metrics_for(receiver, protocol)
    try:
        assert metrics.record_delivered([priced, failed, run]) == 2
    finally:
        metrics.shutdown()

    tokens = receiver.points("gen_ai.client.token.usage")
    inputs = first(tokens, **{"gen_ai.token.type": "input"})
    assert inputs.kind == "histogram"
    assert inputs.temporality == "cumulative"
    assert inputs.unit == "{token}"
    assert (inputs.count, inputs.value) == (1, 101)
    assert inputs.explicit_bounds == TOKEN_BUCKETS
    assert inputs.bucket_counts[4] == 1  # 64 < 101 <= 256
    assert sum(inputs.bucket_counts) == 1
    assert dict(inputs.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "server.address": "api.openai.com",
        "gen_ai.token.type": "input",
    }
    (exemplar,) = inputs.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (f"{trace_of(1):032x}", f"{span_of(1):016x}")
    assert exemplar.value == 101
    outputs = latest(tokens, **{"gen_ai.token.type": "output"})
    assert (outputs.count, outputs.value) == (1, 7)
    assert inputs.resource_attributes["service.name"] == "letta"

    durations = receiver.points("gen_ai.client.operation.duration")
    assert {p.unit for p in durations} == {"s"}
    ok = next(p for p in durations if "error.type" not in p.attributes)
    assert (ok.count, ok.value) == (1, 1.5)
    assert ok.explicit_bounds == DURATION_BUCKETS
    error = first(durations, **{"error.type": "500"})
    assert (error.count, error.value) == (1, pytest.approx(0.05))
    assert error.exemplars[0].span_id == f"{span_of(2):016x}"
    assert not any("error.type" in p.attributes for p in tokens), "token usage has no error.type"
    assert not any(p.attributes.get("gen_ai.operation.name") == "invoke_agent" for p in durations)

    cost = latest(receiver.points("gen_ai.client.cost"))
    assert (cost.kind, cost.value, cost.unit) == ("sum", 0.25, "{USD}")
    assert cost.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    unpriced = receiver.points("gen_ai.client.cost.unpriced")
    assert [p.value for p in unpriced][-1] == 1  # the failed call: a model, no price
    assert not any("gen_ai.agent.name" in p.attributes for p in receiver.points())


@pytest.mark.e2e
def test_the_agent_is_an_opt_in_attribute(receiver):
    metrics = metrics_for(receiver, "grpc", agent_attribute=True)
    try:
        metrics.record_delivered([call_span(1)])
    finally:
        metrics.shutdown()
    point = latest(receiver.points("gen_ai.client.token.usage"))
    assert point.attributes["gen_ai.agent.name"] == "demo"
    assert point.attributes["gen_ai.agent.id"] == "agent-1"


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delta_temporality_sends_each_batch_once(receiver, protocol):
    metrics = metrics_for(receiver, protocol, temporality="delta")
    try:
        metrics.record_delivered([call_span(1), call_span(2)])
        metrics.record_delivered([call_span(3)])
    finally:
        metrics.shutdown()
    inputs = [
        p
        for p in receiver.points("gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "input"
    ]
    assert {p.temporality for p in inputs} == {"delta"}
    assert [(p.count, p.value) for p in inputs] == [(2, 101 + 102), (1, 103)]


@pytest.mark.e2e
def test_cumulative_totals_grow_and_a_re_delivery_adds_nothing(receiver, tmp_path):
    ledger = tmp_path / "state.metrics-ledger"
    batch = [call_span(1), call_span(2)]
    metrics = metrics_for(receiver, "grpc", ledger_path=ledger)
    try:
        assert metrics.record_delivered(batch) == 2
        assert metrics.record_delivered(batch) == 0  # the worker re-sent it
        assert metrics.record_delivered([*batch, call_span(3)]) == 1
    finally:
        metrics.shutdown()
    inputs = latest(receiver.points("gen_ai.client.token.usage"), **{"gen_ai.token.type": "input"})
    assert (inputs.count, inputs.value) == (3, 101 + 102 + 103)

    # A clean stop and a second export over the same window: nothing counted again.
    again = metrics_for(receiver, "grpc", ledger_path=ledger)
    try:
        assert again.record_delivered([*batch, call_span(3)]) == 0
    finally:
        again.shutdown()
    after = [
        p
        for p in receiver.points("gen_ai.client.token.usage")[-10:]
        if p.time_unix_nano > inputs.time_unix_nano
    ]
    assert not after, "a re-export sent new data points"


CHILD = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {root!r})
    from exporter.genai_metrics import GenAIMetrics
    from tests._metric_spans import RESOURCE, call_span
    metrics = GenAIMetrics.from_config(
        endpoint={endpoint!r}, protocol="grpc", resource=RESOURCE, ledger_path={ledger!r},
        temporality="delta",
    )
    metrics.record_delivered([call_span(1), call_span(2)])
    print("delivered", flush=True)
    threading.Event().wait(60)
    """
)


@pytest.mark.e2e
def test_a_kill_9_after_delivery_and_a_restart_count_nothing_twice(receiver, tmp_path):
    ledger = tmp_path / "state.metrics-ledger"
    script = CHILD.format(root=str(ROOT), endpoint=receiver.grpc_endpoint, ledger=str(ledger))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "delivered"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    # The restarted exporter re-sends the batch (its checkpoint had not moved) and a new call.
    metrics = metrics_for(receiver, "grpc", ledger_path=ledger, temporality="delta")
    try:
        assert metrics.record_delivered([call_span(1), call_span(2), call_span(3)]) == 1
    finally:
        metrics.shutdown()
    inputs = [
        p
        for p in receiver.points("gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "input"
    ]
    assert sum(p.count for p in inputs) == 3
    assert sum(p.value for p in inputs) == 101 + 102 + 103


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_backend_without_metrics_gets_one_warning_and_nothing_else(receiver, protocol, caplog):
    receiver.set_metrics_unimplemented()
    caplog.set_level(logging.DEBUG)
    metrics = metrics_for(receiver, protocol)
    try:
        for n in range(3):
            metrics.record_delivered([call_span(n)])
        assert metrics.force_flush()
    finally:
        metrics.shutdown()
    assert receiver.metric_refusals == 1, "metrics are switched off after the first answer"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "no OTLP metrics service" in warnings[0].getMessage()
    assert "traces are not affected" in warnings[0].getMessage()
    assert not receiver.points()


@pytest.mark.e2e
def test_an_unreachable_collector_warns_once_and_never_raises(caplog):
    with OtlpReceiver(enable_grpc=False) as gone:
        url = gone.http_endpoint
    metrics = GenAIMetrics.from_config(
        endpoint=url, protocol="http/protobuf", resource=RESOURCE, timeout=1.0
    )
    try:
        assert metrics.record_delivered([call_span(1)]) == 1
        assert metrics.record_delivered([call_span(2)]) == 1
    finally:
        metrics.shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "not delivered" in warnings[0].getMessage()


def test_secrets_in_headers_never_reach_the_log(receiver, caplog):
    receiver.set_metrics_unimplemented()
    secret = "sk-metrics-secret-0123456789"
    metrics = metrics_for(receiver, "http/protobuf", headers={"Authorization": f"Bearer {secret}"})
    try:
        metrics.record_delivered([call_span(1)])
    finally:
        metrics.shutdown()
    assert caplog.records
    assert secret not in caplog.text


# --- pure parts ---------------------------------------------------------------------------------


def test_only_model_calls_are_measured_and_odd_values_are_ignored():
    assert measure_span(call_span(1, operation="invoke_agent"), agent_attribute=False) is None
    odd = call_span(
        1,
        extra={
            "gen_ai.usage.input_tokens": True,
            "gen_ai.usage.cost": float("nan"),
            "gen_ai.usage.cache_read.input_tokens": 40,
        },
    )
    measurement = measure_span(odd, agent_attribute=False)
    assert measurement is not None
    assert measurement.input_tokens is None
    assert measurement.cost_usd is None
    assert measurement.unpriced
    assert measurement.cache_read_tokens == 40
    assert measurement.duration_s == 1.5
    nameless = measure_span(
        call_span(1, drop=("gen_ai.request.model", "gen_ai.response.model")), agent_attribute=False
    )
    assert nameless is not None
    assert not nameless.unpriced, "no model: nothing to price, not an unknown price"


def test_the_ledger_persists_and_stays_bounded(tmp_path):
    path = tmp_path / "ledger"
    ledger = CountedLedger(path, capacity=3)
    keys = [span_key(trace_of(n), span_of(n)) for n in range(5)]
    ledger.add(keys[:2])
    ledger.add(keys[:2])  # already there: nothing written
    assert path.read_text().splitlines() == keys[:2]
    ledger.add(keys[2:5])
    assert len(ledger) == 3
    assert keys[0] not in ledger
    assert keys[4] in ledger
    # More than twice the capacity in the file: rewritten with the newest keys only.
    assert len(path.read_text().splitlines()) <= 6
    reopened = CountedLedger(path, capacity=3)
    assert [k for k in keys if k in reopened] == keys[2:5]


def test_the_ledger_skips_a_line_torn_by_a_kill(tmp_path):
    path = tmp_path / "ledger"
    good = span_key(trace_of(1), span_of(1))
    path.write_text(f"{good}\n{good[:20]}")
    ledger = CountedLedger(path)
    assert len(ledger) == 1
    assert good in ledger
    ledger.add([span_key(trace_of(2), span_of(2))])
    assert span_key(trace_of(2), span_of(2)) in CountedLedger(path)


def test_the_ledger_compacts_when_the_file_doubles(tmp_path):
    path = tmp_path / "ledger"
    ledger = CountedLedger(path, capacity=2)
    for n in range(10):
        ledger.add([span_key(trace_of(n), span_of(n))])
    lines = path.read_text().splitlines()
    assert len(lines) <= 4
    assert lines[-1] == span_key(trace_of(9), span_of(9))


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/metrics"),
        ("http://collector:4318", "http://collector:4318/v1/metrics"),
        ("https://otlp.example/custom/v1/metrics", "https://otlp.example/custom/v1/metrics"),
    ],
)
def test_the_http_metrics_url_follows_the_traces_endpoint(endpoint, expected):
    assert metrics_url(endpoint) == expected


@pytest.mark.e2e
def test_counters_add_up_over_a_batch_and_keep_an_exemplar(receiver):
    batch = [
        call_span(1, extra={"gen_ai.usage.cost": 0.25, "gen_ai.usage.cache_read.input_tokens": 30}),
        call_span(2, extra={"gen_ai.usage.cost": 0.5, "gen_ai.usage.cache_read.input_tokens": 12}),
        call_span(3, extra={"gen_ai.usage.cost": 1.0, "gen_ai.request.model": "gpt-4o"}),
    ]
    metrics = metrics_for(receiver, "http/protobuf")
    try:
        metrics.record_delivered(batch)
    finally:
        metrics.shutdown()
    costs = receiver.points("gen_ai.client.cost")
    mini = first(costs, **{"gen_ai.request.model": "gpt-4o-mini"})
    assert mini.value == 0.75
    assert mini.exemplars[0].span_id == f"{span_of(2):016x}"
    assert first(costs, **{"gen_ai.request.model": "gpt-4o"}).value == 1.0
    cache = first(receiver.points("gen_ai.client.inference.usage.cache_read.input_tokens"))
    assert cache.value == 42
    assert cache.attributes["gen_ai.token.modality"] == "unknown"
    assert not receiver.points("gen_ai.client.cost.unpriced")


@pytest.mark.e2e
def test_the_converted_fixtures_give_one_duration_point_per_call(receiver):
    from bench.encoder import build_spans

    spans = build_spans(40, "none")
    metrics = metrics_for(receiver, "grpc")
    try:
        counted = metrics.record_delivered(spans)
    finally:
        metrics.shutdown()
    models = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert counted == len(spans)
    assert models, "the fixtures hold chat calls"
    durations = receiver.points("gen_ai.client.operation.duration")
    # Cumulative: the last point of each series holds its total.
    totals = {tuple(sorted(p.attributes.items())): p.count for p in durations}
    assert sum(totals.values()) == len(spans)
    for point in durations:
        assert point.attributes["gen_ai.provider.name"]
        assert point.attributes["gen_ai.request.model"]
