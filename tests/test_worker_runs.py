"""Runs in a long pass: each run is fetched once, and finished runs are closed as discovery
passes them, so open runs (and the checkpoint rewritten after every batch) stay small."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter import wiring
from exporter.checkpoint import Checkpoint
from exporter.settings import Settings
from exporter.telemetry import Metrics
from exporter.wiring import build_exporter
from testkit import FakeLetta, LettaStore, OtlpReceiver

RUNS = 20
STEPS_PER_RUN = 3


def _store() -> LettaStore:
    """Runs one after the other, a minute apart; steps without their own created_at."""
    store = LettaStore()
    agent = "agent-00000000-0000-4000-8000-000000000001"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for r in range(RUNS):
        run_id = f"run-00000000-0000-4000-8000-{r:012d}"
        created = start + timedelta(minutes=r)
        store.add_run(
            {
                "id": run_id,
                "agent_id": agent,
                "status": "completed",
                "created_at": created.isoformat(),
                "completed_at": (created + timedelta(seconds=10)).isoformat(),
            }
        )
        for s in range(STEPS_PER_RUN):
            step_id = f"step-00000000-0000-4000-8000-{r * 100 + s:012d}"
            when = created + timedelta(seconds=s + 1)
            store.add_step(
                {"id": step_id, "run_id": run_id, "agent_id": agent, "model": "gpt-4o-mini"},
                trace={
                    "id": f"provider_trace-00000000-0000-4000-8000-{r * 100 + s:012d}",
                    "request_json": {"model": "gpt-4o-mini", "messages": []},
                    "response_json": {"choices": []},
                    "step_id": step_id,
                    "run_id": run_id,
                    "agent_id": agent,
                    "latency_ms": 100,
                    "created_at": (when + timedelta(milliseconds=200)).isoformat(),
                },
                created_at=when,
            )
    return store


@pytest.mark.parametrize("flavour", ["cloud", "0.16.8"])
async def test_runs_are_fetched_once_and_closed_as_discovery_passes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavour: str
) -> None:
    open_runs_at_save: list[int] = []
    save = Checkpoint.save

    def recording_save(self: Checkpoint) -> None:
        open_runs_at_save.append(sum(len(s.open_runs) for s in self._streams.values()))
        save(self)

    monkeypatch.setattr(Checkpoint, "save", recording_save)
    with FakeLetta(_store(), flavour=flavour) as letta, OtlpReceiver(count_only=True) as rx:
        settings = Settings(
            letta_base_url=letta.url,
            sink="otlp",
            otlp_protocol="grpc",
            otlp_traces_endpoint=rx.grpc_endpoint,
            state_path=tmp_path / "state.json",
            dead_letter_path=tmp_path / "dead.jsonl",
            batch_size=4,
            concurrency=8,
            page_size=5,
        )
        stop = asyncio.Event()
        exporter = build_exporter(settings)
        try:
            async with wiring.letta_client(settings, stop=stop) as client:
                worker = wiring.build_worker(
                    settings,
                    client=client,
                    exporter=exporter,
                    stop=stop,
                    one_shot=True,
                    metrics=Metrics(),
                )
                summary = await worker.export_window()
        finally:
            exporter.shutdown()
        run_fetches = letta.requests_to(r"^/v1/runs/run-[^/]+/?$")
        run_pages = letta.requests_to(r"^/v1/runs/?$")

    assert summary.exported == RUNS * STEPS_PER_RUN
    assert summary.run_spans == RUNS
    assert rx.unique_span_count == RUNS * (STEPS_PER_RUN + 1)
    assert rx.duplicate_count == 0
    # Runs are read a page of the runs list at a time (runs discovery lists them anyway), not
    # one request each.
    if flavour == "cloud":
        # The lookups that start together before the first page is read go one by one.
        assert len(run_fetches) + len(run_pages) < RUNS // 2
    else:
        assert run_fetches == []
    # Closed along the way: never more than a few runs open, however long the pass.
    assert max(open_runs_at_save) <= 4
    assert worker.state.open_runs == {}
