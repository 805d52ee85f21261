"""The delivered-traces ledger and the filter the reconciling poll reads through; the
enrichment's bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from exporter.delivered import DeliveredTraces, SkipDelivered
from exporter.models import ProviderTrace, Step
from exporter.source import Awaiting, CaughtUp, EnrichingSource, Event, Found, Missing, Skipped
from exporter.source._enrich import StepEnricher


def _trace(n: int, step: str | None = None) -> ProviderTrace:
    return ProviderTrace.model_construct(
        id=f"provider_trace-{n:08x}-0000-4000-8000-000000000000",
        request_json={},
        response_json={},
        step_id=step,
        run_id="run-00000000-0000-4000-8000-000000000001",
        agent_id="agent-00000000-0000-4000-8000-000000000001",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


class _Listed:
    name = "api"

    def __init__(self, events: list[Event]) -> None:
        self._events = events

    def stream_key(self) -> str:
        return "listed"

    async def aclose(self) -> None:
        return

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        for event in self._events:
            yield event


def test_the_ledger_survives_a_restart_and_stays_bounded(tmp_path):
    path = tmp_path / "state.json.delivered"
    ledger = DeliveredTraces(path, capacity=10)
    ledger.add([_trace(n).id for n in range(5)], ["run-a"], ["step-a"])
    again = DeliveredTraces(path, capacity=10)
    assert all(again.has_trace(_trace(n).id) for n in range(5))
    assert again.has_run("run-a")
    assert again.has_step("step-a")
    assert not again.has_trace(_trace(99).id)
    assert not again.has_run("run-b")
    again.add([_trace(n).id for n in range(100, 120)])
    assert not again.has_trace(_trace(0).id)  # the oldest went first
    assert again.has_trace(_trace(119).id)


async def test_what_the_socket_delivered_only_moves_the_poll_cursor():
    ledger = DeliveredTraces()
    ledger.add([_trace(1).id], (), ["step-2"])
    step = Step.model_construct(id="step-1", run_id=None, agent_id=None)
    now = 0.0
    events: list[Event] = [
        Found(_trace(1, "step-1"), step=step, position="p1"),
        Found(_trace(3, "step-3"), position="p3"),
        Awaiting("step-2", now, position="p4"),
        Missing("step-2", position=None, fresh=False),
        Awaiting("step-5", now, position="p5"),
        CaughtUp(position="p5"),
    ]
    source = SkipDelivered(_Listed(events), ledger)
    got = [event async for event in source.read(resume=None, follow=False)]
    assert isinstance(got[0], Skipped)
    assert got[0].step_id == "step-1"
    assert got[0].seen
    assert got[0].position == "p1"
    assert isinstance(got[1], Found)  # the socket never had it: the poll ships it
    assert isinstance(got[2], Skipped)
    assert got[2].position == "p4"
    assert isinstance(got[3], Skipped)  # a compacted step's null: nothing to report
    assert isinstance(got[4], Awaiting)
    assert source.skipped == 3


class _SlowClient:
    """A Letta that never answers in time."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_step(self, step_id: str) -> Step:
        self.calls += 1
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def get_agent(self, agent_id: str) -> None:
        return None


async def test_a_letta_that_does_not_answer_never_holds_the_records_up():
    client = _SlowClient()
    clock = [0.0]
    events: list[Event] = [Found(_trace(n, f"step-{n}"), position=f"p{n}") for n in range(50)]
    events.append(CaughtUp(position="p49"))
    enriching = EnrichingSource(
        _Listed(events),
        StepEnricher(client),  # type: ignore[arg-type]
        depth=4,
        timeout=0.05,
        pause=30.0,
        clock=lambda: clock[0],
    )
    got = await asyncio.wait_for(_collect(enriching.read(resume=None, follow=False)), timeout=30)
    assert [e.position for e in got] == [*(f"p{n}" for n in range(50)), "p49"]
    # The first window waited its bounded time; the rest went without lookups.
    assert client.calls <= 4
    assert enriching.without_context == 50


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]
