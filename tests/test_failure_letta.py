"""The Letta hop's failure policy over real sockets: one step Letta keeps failing on is that
step's problem, and error storms slow the exporter down without stopping or crashing it."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from exporter.convert import span_id_for
from exporter.telemetry import DeadLetter
from testkit import FakeLetta, LettaStore, OtlpReceiver
from testkit.fake_letta import Fault
from tests.test_cli import CLI, ROOT, _env, _run, _wait


def _store(count: int) -> LettaStore:
    store = LettaStore()
    store.generate(
        count, agents=3, steps_per_run=4, seed=11, start=datetime.now(UTC) - timedelta(hours=1)
    )
    return store


def _span_ids(letta: FakeLetta, step_ids: list[str]) -> set[str]:
    with httpx.Client(base_url=letta.url) as client:
        return {
            f"{span_id_for(client.get(f'/v1/steps/{s}/trace').json()['id']):016x}" for s in step_ids
        }


def _received(rx: OtlpReceiver) -> set[str]:
    return {sid for _, sid in rx.span_ids()}


@pytest.mark.parametrize("status", [500, 400])
def test_a_step_whose_trace_keeps_failing_is_dead_lettered_and_the_rest_flow(tmp_path, status):
    store = _store(30)
    bad = store.step_ids()[4]
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        good = _span_ids(letta, [s for s in store.step_ids() if s != bad])
        letta.fail(status, times=None, path=rf"/v1/steps/{bad}/trace$")
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint,
            LETTA_EXPORTER_MAX_RETRIES="1",
        )
        result = _run(["export", "--json"], env)
        received = _received(rx)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr  # a record was not delivered
    summary = json.loads(result.stdout)
    assert (summary["exported"], summary["invalid"]) == (29, 1)
    assert good <= received
    (dead,) = DeadLetter(tmp_path / "dead.jsonl").read()
    assert dead["step_id"] == bad
    assert f"HTTP {status}" in dead["error"]


def test_one_shot_export_in_a_70_percent_error_storm_keeps_making_progress(tmp_path):
    store = _store(40)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        expected = _span_ids(letta, store.step_ids())
        letta.add_fault(Fault(status=503, times=None, rate=0.7, seed=3))
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint,
            LETTA_EXPORTER_BATCH_SIZE="10",
        )
        stormy = _run(["export", "--json"], env)
        during = _received(rx) & expected
        letta.clear_faults()
        calm = _run(["export", "--json"], env)
        after = _received(rx)
    assert "Traceback" not in stormy.stderr + calm.stderr
    summary = json.loads(stormy.stdout)
    # Default retries: some calls fail for good, but the export goes on past them.
    assert len(during) >= len(expected) // 2
    if stormy.returncode != 0:
        assert "traces delivered" in (summary["error"] or ""), stormy.stdout
    assert summary["exported"] >= len(during)
    assert calm.returncode == 0, calm.stderr
    assert expected <= after
    assert DeadLetter(tmp_path / "dead.jsonl").read() == []  # nothing good was given up on


@pytest.mark.parametrize(("flavour", "status"), [("0.16.8", 500), ("cloud", 503)])
def test_sidecar_survives_a_70_percent_error_storm_and_delivers_everything(
    tmp_path: Path, flavour: str, status: int
):
    store = _store(80)
    with FakeLetta(store, flavour=flavour) as letta, OtlpReceiver() as rx:  # type: ignore[arg-type]
        expected = _span_ids(letta, store.step_ids())
        letta.add_fault(Fault(status=status, times=None, rate=0.7, seed=5))
        letta.add_fault(Fault(status=429, times=None, rate=0.3, seed=6, retry_after="0"))
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.2",
            LETTA_EXPORTER_HEALTH_PORT="0",
            LETTA_EXPORTER_BATCH_SIZE="10",
        )
        proc = subprocess.Popen(
            [*CLI, "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The storm lasts a bounded time; the sidecar must still be there at its end.
            _wait(lambda: proc.poll() is not None, timeout=20)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            # Progress while the storm goes on (bounded: a loaded machine makes it slower).
            _wait(lambda: bool(_received(rx) & expected), timeout=60)
            during = len(_received(rx) & expected)
            letta.clear_faults()
            assert _wait(lambda: expected <= _received(rx), timeout=60)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert during > 0  # progress during the storm
    assert proc.returncode == 0, err[-3000:]
    for text in ("Traceback", "never retrieved", "already running"):
        assert text not in err
    assert DeadLetter(tmp_path / "dead.jsonl").read() == []


async def test_a_list_page_with_one_unreadable_item_skips_it_and_goes_on(caplog):
    from exporter import wiring
    from exporter.settings import Settings
    from exporter.source import StepFilter

    store = _store(12)
    with FakeLetta(store, flavour="cloud") as letta:
        async with httpx.AsyncClient(base_url=letta.url) as http:
            answer = await http.get("/v1/steps/", params={"order": "asc", "limit": 50})
            page = answer.json()
        page.insert(3, {"id": 5, "agent_id": ["not", "a", "string"]})
        bad_page = json.dumps(page).encode()
        letta.add_fault(Fault(status=200, times=1, path=r"^/v1/steps/$", body=bad_page))
        settings = Settings.load(
            letta_base_url=letta.url, max_retries=0, page_size=50, discovery="steps"
        )
        async with wiring.letta_client(settings) as client:
            ids = [found.step.id async for found in client.discover(StepFilter())]
    assert ids == store.step_ids()
    assert any("skipped" in r.getMessage() for r in caplog.records)


async def test_closing_the_run_lookup_while_another_task_reads_its_list_waits_for_it():
    # A shared run load outlives the step that started it; a new pass closing the runs list
    # under it must wait, not fail with "aclose(): asynchronous generator is already running".
    import asyncio

    from exporter.models import Run
    from exporter.source._runs import RunLookup

    gate = asyncio.Event()

    class _Client:
        async def get_run(self, run_id: str) -> Run:
            return Run(id=run_id, status="completed")

        async def list_runs(self, filt, *, after=None):
            await gate.wait()
            yield Run(id="run-b", status="completed")

    lookup = RunLookup(_Client())  # type: ignore[arg-type]
    assert (await lookup.get("run-a")) is not None  # asked directly; the list is opened
    reader = asyncio.create_task(lookup.get("run-b"))
    for _ in range(5):
        await asyncio.sleep(0)  # the reader is inside the list's generator now
    closing = asyncio.create_task(lookup.aclose())
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    await closing
    found = await reader
    assert found is not None
    assert found.id == "run-b"
