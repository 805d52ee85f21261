"""The source contract: the file source implements it, and the worker drives any source,
including one that gives only traces (no Step, no Run) and waits inside read() when following."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporter.checkpoint import Checkpoint
from exporter.convert import ConvertOptions, build_resource
from exporter.models import ProviderTrace
from exporter.shipping import Shipper
from exporter.source import (
    CaughtUp,
    EnrichingSource,
    Event,
    FileSource,
    Found,
    LettaClient,
    Source,
    StepEnricher,
    Unreadable,
)
from exporter.telemetry import DeadLetter, Metrics
from exporter.worker import Worker, WorkerOptions
from testkit import FakeLetta
from tests.conftest import LETTA

RESOURCE = build_resource("test", {})


def trace(n: int, run_id: str = "run-1") -> ProviderTrace:
    return ProviderTrace(
        id=f"provider_trace-{n:08x}-0000-4000-8000-000000000000",
        step_id=f"step-{n}",
        run_id=run_id,
        agent_id="agent-1",
        request_json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        response_json={"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]},
    )


# ---------------------------------------------------------------------- FileSource
async def collect(source: Source, resume: str | None = None) -> list[Event]:
    return [event async for event in source.read(resume=resume, follow=False)]


async def test_file_source_yields_found_unreadable_in_order_then_caught_up(tmp_path):
    path = tmp_path / "traces.jsonl"
    lines = [trace(1).model_dump_json(), '{"id": 5}', trace(2).model_dump_json()]
    path.write_text("\n".join(lines) + "\n")
    source = FileSource(path)
    assert source.name == "file"
    assert source.stream_key() == f"file:{path}"
    events = await collect(source)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Found", "Unreadable", "Found", "CaughtUp"]
    assert [e.position for e in events] == ["1", "2", "3", "3"]
    bad = events[1]
    assert isinstance(bad, Unreadable)
    assert bad.reason == "invalid"
    assert "line 2" in bad.detail
    # Resuming after the second record yields only what follows it.
    again = await collect(source, resume="2")
    assert [type(e).__name__ for e in again] == ["Found", "CaughtUp"]
    assert isinstance(again[0], Found)
    assert again[0].trace.step_id == "step-2"
    await source.aclose()


# ---------------------------------------------------------------------- a push source
class PushSource:
    """Like the socket source: traces only, a journal offset as the position, waits inside
    read() for more when following."""

    name = "socket"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ProviderTrace | None] = asyncio.Queue()
        self.offset = 0
        self.resumed_from: list[str | None] = []

    def stream_key(self) -> str:
        return "socket:test"

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        self.resumed_from.append(resume)
        while True:
            if self.queue.empty():
                yield CaughtUp(position=str(self.offset))
                if not follow:
                    return
            item = await self.queue.get()  # waits for the next journal entry
            if item is None:
                return
            self.offset += 1
            yield Found(trace=item, position=str(self.offset), origin=self.name)

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def worker_for(
    source: Source,
    tmp_path: Path,
    exporter: InMemorySpanExporter,
    clock: Clock,
    stop: asyncio.Event,
) -> Worker:
    metrics = Metrics()
    dead_letter = DeadLetter(tmp_path / "dead.jsonl")
    shipper = Shipper(exporter=exporter, metrics=metrics, dead_letter=dead_letter, stop=stop)
    return Worker(
        source=source,
        shipper=shipper,
        checkpoint=Checkpoint(tmp_path / "state.json"),
        convert_options=ConvertOptions(),
        resource=RESOURCE,
        options=WorkerOptions(batch_size=2),
        metrics=metrics,
        dead_letter=dead_letter,
        stop=stop,
        run_idle_seconds=60.0,
        clock=clock,
    )


def saved_cursor(tmp_path: Path) -> str | None:
    path = tmp_path / "state.json"
    if not path.exists():
        return None
    streams = json.loads(path.read_text())["streams"]
    return next(iter(streams.values()))["cursor"] if streams else None


async def wait_until(condition, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_worker_follows_a_trace_only_source_and_closes_runs_by_idleness(tmp_path):
    source = PushSource()
    exporter = InMemorySpanExporter()
    clock = Clock()
    stop = asyncio.Event()
    worker = worker_for(source, tmp_path, exporter, clock, stop)
    for n in (1, 2, 3):
        source.queue.put_nowait(trace(n))
    task = asyncio.create_task(worker.run_forever(poll_seconds=0.01))
    await wait_until(lambda: saved_cursor(tmp_path) == "3")  # saved once delivered
    assert len(exporter.get_finished_spans()) == 3
    state = json.loads((tmp_path / "state.json").read_text())["streams"]
    (stream,) = state.values()
    assert stream["cursor"] == "3"
    assert list(stream["open_runs"]) == ["run-1"]  # no status known: the run waits
    assert not any(s.name.startswith("invoke_agent") for s in exporter.get_finished_spans())
    # A minute without a step of run-1 (the idle rule), and the next entry closes it.
    clock.now += 61
    source.queue.put_nowait(trace(4, run_id="run-2"))
    await wait_until(
        lambda: any(s.name.startswith("invoke_agent") for s in exporter.get_finished_spans())
    )
    parents = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent")]
    assert len(parents) == 1
    assert parents[0].attributes["letta.run.id"] == "run-1"
    stop.set()
    source.queue.put_nowait(None)
    await asyncio.wait_for(task, 10)
    assert worker.total.exported == 4
    assert worker.state.cursor == "4"
    assert set(worker.state.open_runs) == {"run-2"}
    assert source.resumed_from == [None]


async def test_one_shot_over_a_trace_only_source_ships_every_run_at_the_end(tmp_path):
    source = PushSource()
    exporter = InMemorySpanExporter()
    stop = asyncio.Event()
    worker = worker_for(source, tmp_path, exporter, Clock(), stop)
    for n, run in ((1, "run-a"), (2, "run-b"), (3, "run-a")):
        source.queue.put_nowait(trace(n, run_id=run))
    summary = await worker.export_window()
    names = sorted(s.name.split(" ")[0] for s in exporter.get_finished_spans())
    assert names.count("invoke_agent") == 2
    assert summary.exported == 3
    assert summary.run_spans == 2
    assert summary.discovered == 3
    assert worker.state.open_runs == {}
    assert worker.state.cursor == "3"


# ---------------------------------------------------------------------- enrichment
async def test_enriching_source_fills_in_step_run_and_agent_from_the_api():
    steps = {
        p.stem: json.loads(p.read_bytes()) for p in sorted((LETTA / "steps").glob("step-*.json"))
    }
    traced = [rec for rec in steps.values() if rec["trace"] is not None][:3]
    with FakeLetta.from_fixtures(LETTA, flavour="0.16.8") as letta:
        client = LettaClient(httpx.AsyncClient(base_url=letta.url))
        source = PushSource()
        for rec in traced:
            source.queue.put_nowait(ProviderTrace.model_validate(rec["trace"]))
        enriched = EnrichingSource(source, StepEnricher(client), depth=4)
        assert enriched.name == "socket"
        assert enriched.stream_key() == "socket:test"
        events = [e async for e in enriched.read(resume=None, follow=False)]
        await enriched.aclose()
        await client.aclose()
    found = [e for e in events if isinstance(e, Found)]
    assert isinstance(events[-1], CaughtUp)
    assert [e.trace.step_id for e in found] == [rec["step"]["id"] for rec in traced]
    for event, rec in zip(found, traced, strict=True):
        assert event.step is not None
        assert event.step.id == rec["step"]["id"]
        assert event.run is not None
        assert event.run.id == rec["trace"]["run_id"]
        assert event.agent is not None
        assert event.agent.id == rec["trace"]["agent_id"]
        assert event.position is not None
