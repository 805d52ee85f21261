"""GenAI metrics end to end: fake Letta -> ``export`` / ``run`` -> the real OTLP receiver's
metrics service, each call counted once across re-exports, restarts and a kill -9.

Counts are read from delta points (each export adds what it counted since the last one), so the
sum over every point the receiver got is what the exporter counted in all.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from exporter import commands
from exporter.settings import Settings
from testkit import FakeLetta, OtlpReceiver, ReceivedSpan
from tests.conftest import LETTA
from tests.test_cli import CLI, ROOT, _backlog, _env, _wait
from tests.test_worker_e2e import TRACED, settings_for

pytestmark = pytest.mark.e2e

DURATION = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
COST = "gen_ai.client.cost"
#: Hand-computed in tests/test_convert_cost.py from the providers' list prices.
OPENAI_STEP_COST = 0.00030075  # gpt-4o-mini, step-34cc935d: 2357 in (1152 cached), 56 out
ANTHROPIC_STEP_COST = 0.0042426  # claude-sonnet-4-5, step-67beedd0: 1224 in + 1152 read, 15 out


def counted_calls(rx: OtlpReceiver) -> int:
    """Calls the exporter counted, over every export it made (delta points)."""
    return sum(p.count for p in rx.points(DURATION))


def llm_spans(rx: OtlpReceiver) -> dict[str, ReceivedSpan]:
    return {
        s.span_id: s
        for s in rx.spans()
        if s.attributes.get("gen_ai.operation.name") not in (None, "invoke_agent")
    }


def export(tmp_path: Path, letta: FakeLetta, rx: OtlpReceiver, **overrides: object) -> int:
    values: dict[str, object] = {
        "metrics": True,
        "metrics_temporality": "delta",
        "metrics_interval_seconds": 600.0,
    }
    values.update(overrides)
    settings = settings_for(letta, rx, tmp_path, **values)
    data, code = commands.export(settings, dry_run=False, as_json=True)
    assert data["error"] is None, data
    return code


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_an_export_sends_the_calls_tokens_durations_and_cost_with_their_attributes(
    tmp_path, protocol
):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        code = export(tmp_path, letta, rx, otlp_protocol=protocol, otlp_traces_endpoint=endpoint)
        assert code == 0
        spans = llm_spans(rx)
        durations, tokens, costs = rx.points(DURATION), rx.points(TOKENS), rx.points(COST)

    assert len(spans) == len(TRACED) == 22
    assert sum(p.count for p in durations) == 22
    for point in durations:
        a = point.attributes
        assert point.temporality == "delta"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] in {"openai", "anthropic"}
        assert a["gen_ai.request.model"]
        assert "gen_ai.agent.id" not in a  # opt-in
        assert point.resource_attributes["service.name"] == "letta"
        assert point.protocol == protocol.split("/")[0]
    # The failed calls are timed under their error type.
    assert sum(p.count for p in durations if "error.type" in p.attributes) == sum(
        1 for s in spans.values() if s.span.status.code == 2
    )
    for token_type, key in (("input", "input_tokens"), ("output", "output_tokens")):
        sent = sum(s.attributes.get(f"gen_ai.usage.{key}", 0) for s in spans.values())
        got = sum(p.value for p in tokens if p.attributes["gen_ai.token.type"] == token_type)
        assert got == sent > 0
    exemplars = [e for p in durations for e in p.exemplars]
    assert exemplars
    assert {e.span_id for e in exemplars} <= set(spans)

    # Cost on the spans, for two models, against the hand-computed list prices ...
    by_step = {s.attributes["letta.step.id"]: s.attributes for s in spans.values()}
    openai = by_step["step-34cc935d-18dd-4162-8a34-92d3293bbadb"]
    anthropic = by_step["step-67beedd0-50b6-4d44-b5e3-184a82938123"]
    assert openai["gen_ai.usage.cost"] == pytest.approx(OPENAI_STEP_COST, rel=1e-12)
    assert openai["llm.cost.total"] == openai["gen_ai.usage.cost"]
    assert anthropic["gen_ai.usage.cost"] == pytest.approx(ANTHROPIC_STEP_COST, rel=1e-12)
    # ... and the cost metric adds up the spans' costs, per model.
    per_model: dict[str, float] = defaultdict(float)
    for attrs in by_step.values():
        if "gen_ai.usage.cost" in attrs:
            per_model[attrs["gen_ai.request.model"]] += attrs["gen_ai.usage.cost"]
    metric: dict[str, float] = defaultdict(float)
    for point in costs:
        metric[point.attributes["gen_ai.request.model"]] += point.value
    assert len(per_model) >= 2
    assert metric.keys() == per_model.keys()
    for model, total in per_model.items():
        assert metric[model] == pytest.approx(total, rel=1e-9)


def test_a_second_export_of_the_same_window_counts_nothing_again(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        assert export(tmp_path, letta, rx) == 0
        first = counted_calls(rx)
        assert export(tmp_path, letta, rx) == 0  # resumes: nothing new
        assert counted_calls(rx) == first
        # Without the state file every span is sent again; the ledger beside it remembers.
        (tmp_path / "state.json").unlink()
        sent = rx.span_count
        assert export(tmp_path, letta, rx) == 0
        assert rx.span_count > sent  # really delivered again
        assert counted_calls(rx) == first == 22


def test_a_backend_without_metrics_gets_one_warning_and_all_the_traces(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with (
        FakeLetta.from_fixtures(LETTA) as letta,
        OtlpReceiver(metrics_unimplemented=True) as rx,
    ):
        assert export(tmp_path, letta, rx, batch_size=3) == 0
        assert len(llm_spans(rx)) == 22
        refusals = rx.metric_refusals
        assert not rx.points()
    warnings = [r for r in caplog.records if "metric" in r.getMessage().lower()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert refusals == 1  # asked once, then off


def _cli_env(tmp_path: Path, letta: FakeLetta, rx: OtlpReceiver, **extra: str) -> dict[str, str]:
    return _env(
        tmp_path,
        LETTA_BASE_URL=letta.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        LETTA_EXPORTER_METRICS="true",
        LETTA_EXPORTER_METRICS_TEMPORALITY="delta",
        LETTA_EXPORTER_METRICS_INTERVAL_SECONDS="600",
        LETTA_EXPORTER_HEALTH_PORT="0",  # a free port: never the default another process holds
        **extra,
    )


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_kill_9_then_a_restart_counts_at_most_the_batch_in_flight_twice(tmp_path):
    store, step_ids = _backlog(300)
    batch = 20
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cli_env(tmp_path, letta, rx, LETTA_EXPORTER_BATCH_SIZE=str(batch))
        rx.set_delay(0.05)
        proc = _start(env, "export", "--json")
        assert _wait(lambda: counted_calls(rx) >= 60)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert rx.wait_idle(10)
        before = counted_calls(rx)
        assert before < len(step_ids)  # it really was cut short

        rx.set_delay(0)
        proc = _start(env, "export", "--json")
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert rx.wait_idle(10)
        calls = counted_calls(rx)
        delivered = len({sid for _, sid in rx.span_ids()} & set(llm_spans(rx)))
    assert delivered == len(step_ids)
    # Nothing is lost, and at most the one batch in flight at the kill is counted twice.
    assert len(step_ids) <= calls <= len(step_ids) + batch


def test_a_clean_stop_and_restart_of_the_sidecar_count_nothing_twice(tmp_path):
    store, step_ids = _backlog(40)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cli_env(tmp_path, letta, rx, LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.2")
        proc = _start(env, "run")
        try:
            assert _wait(lambda: counted_calls(rx) >= len(step_ids))
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert counted_calls(rx) == len(step_ids)

        proc = _start(env, "run")
        try:
            # New steps after the restart are counted; the ones before are not again.
            more = store.generate(5, agents=1, steps_per_run=5, seed=11)
            assert _wait(lambda: counted_calls(rx) >= len(step_ids) + len(more))
            assert rx.wait_idle(5)
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert counted_calls(rx) == len(step_ids) + len(more)


def test_each_shard_of_a_parallel_export_keeps_its_own_ledger(tmp_path):
    store, step_ids = _backlog(60)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cli_env(tmp_path, letta, rx, LETTA_EXPORTER_BATCH_SIZE="10")
        for _ in range(2):  # the second time: nothing new, nothing counted again
            proc = _start(env, "export", "--json", "--workers", "2")
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert rx.wait_idle(10)
            assert counted_calls(rx) == len(step_ids)
    ledgers = sorted(p.name for p in tmp_path.glob("state.json.metrics-ledger*"))
    assert ledgers == [
        "state.json.metrics-ledger.shard-0-of-2",
        "state.json.metrics-ledger.shard-1-of-2",
    ]


def test_a_file_exported_twice_is_counted_once(tmp_path):
    """A file export keeps no checkpoint: every span is sent again, the ledger counts it once."""
    path = tmp_path / "traces.jsonl"
    lines = [
        json.dumps(json.loads(p.read_bytes())["trace"])
        for p in sorted((LETTA / "steps").glob("step-*.json"))
        if json.loads(p.read_bytes())["trace"] is not None
    ]
    path.write_text("\n".join(lines) + "\n")
    with OtlpReceiver() as rx:
        for _ in range(2):
            settings = Settings(  # type: ignore[call-arg]
                source="file",
                input=path,
                sink="otlp",
                otlp_protocol="grpc",
                otlp_traces_endpoint=rx.grpc_endpoint,
                state_path=tmp_path / "state.json",
                dead_letter_path=tmp_path / "dead.jsonl",
                metrics=True,
                metrics_temporality="delta",
                metrics_interval_seconds=600.0,
            )
            data, code = commands.export(settings, dry_run=False, as_json=True)
            assert code == 0, data
            assert data["exported"] == len(lines)
        assert rx.wait_idle()
        assert rx.duplicate_count >= len(lines)  # the spans really were sent twice
        assert counted_calls(rx) == len(lines) == 22


def test_an_unreadable_ledger_turns_the_metrics_off_not_the_export(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "state.json.metrics-ledger").mkdir()  # a directory: cannot be read as a file
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        assert export(tmp_path, letta, rx) == 0
        assert len(llm_spans(rx)) == 22
        assert not rx.points()
    (line,) = [r.getMessage() for r in caplog.records if "GenAI metrics off" in r.getMessage()]
    assert "metrics-ledger" in line
