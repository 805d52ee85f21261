"""The pipeline end to end over real sockets: fake Letta -> worker -> real OTLP receiver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter import wiring
from exporter.convert import span_id_for, trace_id_for_run
from exporter.errors import SourceHTTPError, UndeliveredError
from exporter.settings import Settings
from exporter.source._enrich import POISON_PASSES
from exporter.telemetry import Metrics
from exporter.wiring import build_exporter
from exporter.worker import Worker, in_shard
from testkit import FakeLetta, LettaStore, OtlpReceiver
from tests.conftest import LETTA

FIXTURE_STEPS = {
    p.stem: json.loads(p.read_bytes()) for p in sorted((LETTA / "steps").glob("step-*.json"))
}
TRACED = {sid: rec for sid, rec in FIXTURE_STEPS.items() if rec["trace"] is not None}
RUNS_WITH_TRACES = {rec["trace"]["run_id"] for rec in TRACED.values()}
# Every run gets its invoke_agent span, also one whose only call left no trace (a failed call).
ALL_RUNS = {rec["step"]["run_id"] for rec in FIXTURE_STEPS.values()}


def _hex_span(record_id: str) -> str:
    return f"{span_id_for(record_id):016x}"


def _hex_trace(run_id: str) -> str:
    return f"{trace_id_for_run(run_id):032x}"


def _ns(iso: str) -> int:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def settings_for(
    letta: FakeLetta, rx: OtlpReceiver | None, tmp_path: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "letta_base_url": letta.url,
        "sink": "otlp",
        "otlp_protocol": "grpc",
        "otlp_traces_endpoint": rx.grpc_endpoint if rx else "http://127.0.0.1:9",
        "otlp_timeout_ms": 2000,
        "state_path": tmp_path / "state.json",
        "dead_letter_path": tmp_path / "dead.jsonl",
        "trace_settle_seconds": 1.0,
        "retry_backoff_initial_seconds": 0.01,
        "retry_backoff_max_seconds": 0.05,
        "batch_size": 7,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def make_worker(
    settings: Settings,
    *,
    one_shot: bool = True,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Worker]:
    stop = stop or asyncio.Event()
    exporter = build_exporter(settings)
    async with wiring.letta_client(settings, stop=stop) as client:
        try:
            yield wiring.build_worker(
                settings,
                client=client,
                exporter=exporter,
                stop=stop,
                one_shot=one_shot,
                metrics=Metrics(),
                clock=clock,
            )
        finally:
            exporter.shutdown()


def _dead_letters(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("protocol", "compression"),
    [("grpc", "none"), ("grpc", "gzip"), ("http/protobuf", "none"), ("http/protobuf", "gzip")],
)
async def test_every_fixture_trace_arrives_with_its_ids_times_and_attributes(
    tmp_path, protocol, compression
):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        settings = settings_for(
            letta,
            rx,
            tmp_path,
            otlp_protocol=protocol,
            otlp_traces_endpoint=endpoint,
            otlp_compression=compression,
        )
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
        assert rx.wait_for(len(TRACED) + len(ALL_RUNS))
        spans = {s.span_id: s for s in rx.spans()}

    assert summary.exported == len(TRACED) == 22
    assert summary.run_spans == len(ALL_RUNS)
    assert rx.duplicate_count == 0
    for step_id, rec in TRACED.items():
        trace = rec["trace"]
        span = spans[_hex_span(trace["id"])]
        assert span.trace_id == _hex_trace(trace["run_id"])
        assert span.span.end_time_unix_nano == _ns(trace["created_at"])
        # Self-hosted traces carry no latency: the duration is the step's LLM request time
        # (none recorded for a failed call: a zero-length span).
        llm_ns = rec["metrics"]["llm_request_ns"] or 0
        assert span.span.end_time_unix_nano - span.span.start_time_unix_nano == llm_ns
        assert span.attributes["letta.step.id"] == step_id
        assert span.attributes["gen_ai.request.model"] == trace["request_json"]["model"]
        parent = span.span.parent_span_id.hex()
        run_span = spans[parent]
        assert run_span.name.startswith("invoke_agent")
        assert run_span.trace_id == span.trace_id
        assert run_span.span.start_time_unix_nano <= span.span.start_time_unix_nano
        assert run_span.span.end_time_unix_nano >= span.span.end_time_unix_nano
    # The failed streaming step wrote no trace: reported, not dropped.
    missing = [d for d in _dead_letters(tmp_path / "dead.jsonl") if d["reason"] == "no_trace"]
    assert [d["step_id"] for d in missing] == ["step-0926f9bd-777f-4b1a-a0f2-d59219f2b880"]
    assert summary.missing == 1


async def test_cloud_server_uses_the_steps_list_and_latency_ms(tmp_path, caplog):
    caplog.set_level("INFO")
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
        spans = {s.span_id: s for s in rx.spans()}
        assert letta.requests_to(r"^/v1/steps/$")
        assert not letta.requests_to(r"^/v1/runs/$")
    assert summary.exported == 22
    assert "discovery: steps" in caplog.text
    for rec in TRACED.values():
        span = spans[_hex_span(rec["trace"]["id"])]
        latency_ns = ((rec["metrics"]["llm_request_ns"] or 0) // 1_000_000) * 1_000_000
        assert span.span.end_time_unix_nano - span.span.start_time_unix_nano == latency_ns
        assert span.attributes["letta.duration.source"] == "latency_ms"


async def test_collector_down_at_start_then_up_delivers_everything(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.stop()
        settings = settings_for(letta, rx, tmp_path)
        stop = asyncio.Event()
        async with make_worker(settings, one_shot=False, stop=stop) as worker:
            task = asyncio.create_task(worker.run_forever(poll_seconds=0.05))
            for _ in range(400):
                if worker._metrics.value("letta_exporter_export_failures_total") >= 2:
                    break
                await asyncio.sleep(0.02)
            # Nothing delivered, so nothing checkpointed.
            assert worker.state.cursor is None
            assert worker.state.delivered == 0
            rx.start()
            delivered = await asyncio.to_thread(rx.wait_for, 22 + len(ALL_RUNS), 30)
            stop.set()
            await asyncio.wait_for(task, 10)
        assert delivered
        assert rx.duplicate_count == 0
        assert worker.state.cursor is not None
        assert worker._metrics.value("letta_exporter_retries_total", hop="collector") >= 2


async def test_partial_success_is_counted_and_reported(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.partial_success(2, "attribute value too long", count=1)
        settings = settings_for(letta, rx, tmp_path, batch_size=100)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
    assert summary.rejected == 2
    assert not summary.ok
    assert any("attribute value too long" in f for f in summary.failures)
    assert worker._metrics.value("letta_exporter_spans_rejected_total") == 2


async def test_letta_429_and_500_for_a_while(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        letta.fail(429, times=3, retry_after=0)
        letta.fail(500, times=4, path=r"/trace$")
        letta.fail(503, times=2, path=r"^/v1/runs/run-[^/]+/steps")
        settings = settings_for(letta, rx, tmp_path)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
        assert rx.wait_for(22 + len(ALL_RUNS))
    assert summary.exported == 22
    assert summary.ok
    assert worker._metrics.value("letta_exporter_retries_total", hop="letta") >= 9


async def test_collector_refusing_for_good_dead_letters_the_batch(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.reject_all("bad request")
        settings = settings_for(letta, rx, tmp_path, batch_size=100)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
    assert summary.undelivered == 22 + len(ALL_RUNS)
    refused = [d for d in _dead_letters(tmp_path / "dead.jsonl") if d["reason"] == "refused"]
    assert refused
    assert "resourceSpans" in str(refused[0]["otlp_json"])
    assert sum(len(d["ids"]) for d in refused) == 22 + len(ALL_RUNS)


async def test_one_shot_gives_up_at_the_deadline_without_moving_the_checkpoint(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        rx.stop()
        settings = settings_for(letta, rx, tmp_path, export_deadline_seconds=0.5)
        async with make_worker(settings) as worker:
            with pytest.raises(UndeliveredError) as info:
                await worker.export_window()
        assert len(info.value.trace_ids) == 7  # the first batch
        assert worker.state.cursor is None
        state = (
            json.loads((tmp_path / "state.json").read_text())
            if (tmp_path / "state.json").exists()
            else {"streams": {}}
        )
        assert all(s["cursor"] is None for s in state["streams"].values())


def _run_store(status: str = "running") -> tuple[LettaStore, str, str]:
    store = LettaStore()
    agent = "agent-11111111-1111-4111-8111-111111111111"
    run = "run-22222222-2222-4222-8222-222222222222"
    store.add_agent({"id": agent, "name": "support-bot"})
    store.add_run({"id": run, "agent_id": agent, "status": status})
    return store, agent, run


def _add_step(store: LettaStore, run: str, agent: str, n: int) -> str:
    step_id = f"step-{n:08d}-0000-4000-8000-000000000000"
    trace_id = f"provider_trace-{n:08d}-0000-4000-8000-000000000000"
    now = datetime.now(UTC)
    store.add_step(
        {"id": step_id, "run_id": run, "agent_id": agent, "model": "gpt-4o-mini"},
        trace={
            "id": trace_id,
            "step_id": step_id,
            "run_id": run,
            "agent_id": agent,
            "request_json": {"model": "gpt-4o-mini", "messages": []},
            "response_json": {"id": f"chatcmpl-{n}", "model": "gpt-4o-mini", "choices": []},
            "created_at": now.isoformat(),
            "latency_ms": 100,
        },
        metrics={"id": step_id, "llm_request_ns": 100_000_000},
    )
    return trace_id


@pytest.mark.parametrize("flavour", ["0.16.8", "cloud"])
async def test_run_in_progress_exports_steps_as_they_come_and_the_parent_once(tmp_path, flavour):
    store, agent, run = _run_store()
    first = [_add_step(store, run, agent, n) for n in (1, 2)]
    with FakeLetta(store, flavour=flavour) as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path)
        stop = asyncio.Event()
        async with make_worker(settings, one_shot=False, stop=stop) as worker:
            await worker.run_pass()
            assert {s.span_id for s in rx.spans()} == {_hex_span(t) for t in first}
            assert run in worker.state.open_runs  # no parent while the run goes on

            later = [_add_step(store, run, agent, n) for n in (3, 4)]
            await worker.run_pass()
            await worker.run_pass()  # nothing new: nothing sent twice
            assert rx.span_count == 4

            store.set_run_status(run, "completed")
            await worker.run_pass()
            await worker.run_pass()
        spans = rx.spans()
    assert rx.duplicate_count == 0
    assert {s.span_id for s in spans} == {_hex_span(t) for t in first + later} | {
        _hex_span_run(spans)
    }
    parent = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert parent.name == "invoke_agent support-bot"
    assert parent.attributes["letta.run.step_count"] == 4
    assert all(s.span.parent_span_id.hex() == parent.span_id for s in spans if s is not parent)
    assert not worker.state.open_runs


def _hex_span_run(spans: list) -> str:
    return next(s.span_id for s in spans if s.name.startswith("invoke_agent"))


async def test_trace_not_written_yet_is_asked_again_and_holds_back_only_its_run(tmp_path):
    store, agent, run = _run_store(status="completed")
    traces = [_add_step(store, run, agent, n) for n in (1, 2, 3)]
    held = store.step_ids()[1]
    other_store_run = "run-33333333-3333-4333-8333-333333333333"
    store.add_run({"id": other_store_run, "agent_id": agent, "status": "completed"})
    other = _add_step(store, other_store_run, agent, 4)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        letta.hold_traces(held)
        settings = settings_for(letta, rx, tmp_path, trace_settle_seconds=60)
        async with make_worker(settings, one_shot=False) as worker:
            await worker.run_pass()
            ids = {s.span_id for s in rx.spans()}
            assert _hex_span(traces[1]) not in ids
            assert {_hex_span(traces[0]), _hex_span(traces[2]), _hex_span(other)} <= ids
            assert list(worker.state.pending) == [held]
            # The other run is complete and has nothing pending: its parent is out.
            assert other_store_run not in worker.state.open_runs
            assert run in worker.state.open_runs
            letta.release_traces(held)
            await worker.run_pass()
        ids = {s.span_id for s in rx.spans()}
    assert _hex_span(traces[1]) in ids
    assert not worker.state.pending
    assert not worker.state.open_runs
    assert rx.duplicate_count == 0


async def test_trace_still_missing_after_settle_time_is_reported(tmp_path):
    store, agent, run = _run_store(status="running")
    _add_step(store, run, agent, 1)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        letta.hold_traces()
        settings = settings_for(letta, rx, tmp_path, trace_settle_seconds=0.2)
        async with make_worker(settings) as worker:
            summary = await worker.export_window(poll_seconds=0.05)
    assert summary.missing == 1
    assert summary.pending == 0
    assert [d["reason"] for d in _dead_letters(tmp_path / "dead.jsonl")] == ["no_trace"]


async def test_invalid_trace_is_reported_and_the_rest_delivered(tmp_path):
    store, agent, run = _run_store(status="completed")
    good = _add_step(store, run, agent, 1)
    bad_step = f"step-{2:08d}-0000-4000-8000-000000000000"
    store.add_step(
        {"id": bad_step, "run_id": run, "agent_id": agent},
        trace={
            "id": "provider_trace-00000002-0000-4000-8000-000000000000",
            "request_json": {},
            "response_json": {},
            "latency_ms": "slow",
        },
    )
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
        ids = {s.span_id for s in rx.spans()}
    assert _hex_span(good) in ids
    assert summary.invalid == 1
    assert not summary.ok
    invalid = [d for d in _dead_letters(tmp_path / "dead.jsonl") if d["reason"] == "invalid"]
    assert invalid[0]["step_id"] == bad_step
    assert "latency_ms" in invalid[0]["error"]


async def test_resume_continues_after_the_checkpoint_without_resending(tmp_path):
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path, limit=9, until=datetime.now(UTC))
        async with make_worker(settings) as worker:
            first = await worker.export_window()
        assert first.exported == 9
        settings = settings_for(letta, rx, tmp_path, until=settings.until)
        async with make_worker(settings) as worker:
            second = await worker.export_window()
        llm = [s for s in rx.spans() if not s.name.startswith("invoke_agent")]
    assert second.exported == 22 - 9
    assert len({s.span_id for s in llm}) == len(llm) == 22


async def test_shards_split_the_steps_with_no_overlap_and_one_parent_per_run(tmp_path):
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        totals = []
        for index in range(3):
            settings = settings_for(letta, rx, tmp_path, shard=f"{index}/3")
            async with make_worker(settings) as worker:
                totals.append((await worker.export_window()).exported)
        spans = rx.spans()
    llm = [s for s in spans if not s.name.startswith("invoke_agent")]
    parents = [s for s in spans if s.name.startswith("invoke_agent")]
    assert sum(totals) == 22
    assert len({s.span_id for s in llm}) == len(llm) == 22
    assert all(t < 22 for t in totals)
    owners = [sum(in_shard(sid, (i, 3)) for i in range(3)) for sid in TRACED]
    assert owners == [1] * len(TRACED)
    # Each run's parent comes from one shard only, and counts the steps every shard exported.
    assert rx.duplicate_count == 0
    assert len(parents) == len({s.span_id for s in parents}) == len(ALL_RUNS)
    steps_per_run: dict[str, int] = {}
    for rec in FIXTURE_STEPS.values():
        steps_per_run[rec["step"]["run_id"]] = steps_per_run.get(rec["step"]["run_id"], 0) + 1
    for parent in parents:
        run_id = parent.attributes["letta.run.id"]
        assert parent.attributes["letta.run.step_count"] == steps_per_run[run_id]
        children = [s for s in llm if s.trace_id == parent.trace_id]
        assert bool(children) == (run_id in RUNS_WITH_TRACES)
        assert all(s.span.parent_span_id.hex() == parent.span_id for s in children)


async def test_since_until_window_and_agent_filter(tmp_path):
    store, agent, run = _run_store(status="completed")
    old = datetime.now(UTC) - timedelta(days=2)
    _add_step(store, run, agent, 1)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        settings = settings_for(letta, rx, tmp_path, until=old)
        async with make_worker(settings) as worker:
            summary = await worker.export_window()
        assert summary.exported == 0
        settings = settings_for(
            letta, rx, tmp_path, since=old, agent_ids=["agent-00000000-0000-4000-8000-000000000000"]
        )
        async with make_worker(settings) as worker:
            assert (await worker.export_window()).exported == 0
        settings = settings_for(letta, rx, tmp_path, since=old, agent_ids=[agent])
        async with make_worker(settings) as worker:
            assert (await worker.export_window()).exported == 1


async def test_step_and_run_deleted_meanwhile_do_not_stall_the_sidecar(tmp_path):
    store, agent, run = _run_store(status="running")
    kept = _add_step(store, run, agent, 1)
    _add_step(store, run, agent, 2)
    held = store.step_ids()[1]
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        letta.hold_traces(held)
        settings = settings_for(letta, rx, tmp_path, trace_settle_seconds=0.3)
        now = [time.time()]
        async with make_worker(settings, one_shot=False, clock=lambda: now[0]) as worker:
            await worker.run_pass()
            assert list(worker.state.pending) == [held]
            # Both the held step and its run are deleted: 404 from their routes from now on.
            letta.fail(404, times=None, path=rf"^/v1/steps/{held}$")
            letta.fail(404, times=None, path=rf"^/v1/runs/{run}$")
            await worker.run_pass()
            assert list(worker.state.pending) == [held]  # not settled yet
            now[0] += 0.35  # past the settle time
            summary = await worker.run_pass()
        spans = rx.spans()
    assert summary.missing == 1
    assert not worker.state.pending
    assert not worker.state.open_runs
    parent = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert parent.attributes["letta.run.id"] == run
    assert _hex_span(kept) in {s.span_id for s in spans}


async def test_a_trace_letta_always_fails_on_is_reported_after_a_few_passes(tmp_path):
    store, agent, run = _run_store(status="completed")
    traces = [_add_step(store, run, agent, n) for n in (1, 2, 3)]
    broken = store.step_ids()[1]
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        letta.fail(500, times=None, path=rf"^/v1/steps/{broken}/trace$")
        settings = settings_for(letta, rx, tmp_path, max_retries=1, batch_size=1)
        async with make_worker(settings, one_shot=False) as worker:
            for _ in range(POISON_PASSES - 1):  # the first passes stop on it: the cursor waits
                with pytest.raises(SourceHTTPError):
                    await worker.run_pass()
                assert {s.span_id for s in rx.spans()} == {_hex_span(traces[0])}
            summary = await worker.run_pass()
        ids = {s.span_id for s in rx.spans()}
    assert summary.invalid == 1
    assert {_hex_span(traces[0]), _hex_span(traces[2])} <= ids
    assert _hex_span(traces[1]) not in ids
    (dead,) = _dead_letters(tmp_path / "dead.jsonl")
    assert dead["reason"] == "unreadable"
    assert dead["step_id"] == broken
    assert "500" in dead["error"]


async def test_sidecar_survives_letta_down_and_garbage_then_catches_up(tmp_path, caplog):
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as letta, OtlpReceiver() as rx:
        letta.fail(503, times=None)
        settings = settings_for(letta, rx, tmp_path, max_retries=0)
        stop = asyncio.Event()
        async with make_worker(settings, one_shot=False, stop=stop) as worker:
            task = asyncio.create_task(worker.run_forever(poll_seconds=0.05))
            for _ in range(200):
                if "pass failed" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            letta.clear_faults()
            letta.malformed(times=1, path=r"^/v1/steps/$", body=b'[{"id": 5}]')
            delivered = await asyncio.to_thread(rx.wait_for, 22, 30)
            stop.set()
            await asyncio.wait_for(task, 10)
    assert delivered
    assert not task.exception()
    assert "HTTP 503" in caplog.text
