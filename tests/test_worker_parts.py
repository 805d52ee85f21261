"""The worker's parts on their own: the read-ahead window, the batch applier, the single-flight
cache and the rate-limited log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from exporter._ratelimit import RateLimitedLog
from exporter._singleflight import SingleFlight
from exporter._window import ordered_map
from exporter.batch import Batch, Entry, Kind, apply_delivered
from exporter.checkpoint import PendingStep, StreamState

from ._sink_spans import make_batch


# ---------------------------------------------------------------------- ordered_map
async def numbers(count: int, pulled: list[int]) -> AsyncIterator[int]:
    for n in range(count):
        pulled.append(n)
        yield n


async def test_ordered_map_keeps_order_whatever_finishes_first():
    async def work(n: int) -> int:
        await asyncio.sleep(0.001 * ((7 * n) % 5))  # later items often finish first
        return n * 10

    out = [
        r
        async for r in ordered_map(
            numbers(40, []), work, depth=4, needs_work=lambda n: True, done=lambda n: -1
        )
    ]
    assert out == [n * 10 for n in range(40)]


async def test_ordered_map_bounds_work_in_flight_and_the_window():
    running = 0
    most = 0
    gate = asyncio.Event()

    async def work(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return n

    pulled: list[int] = []
    stream = ordered_map(
        numbers(100, pulled), work, depth=3, needs_work=lambda n: True, done=lambda n: n
    )
    first = asyncio.ensure_future(stream.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(pulled) == 3  # the window is full: nothing more read ahead
    gate.set()
    rest = [await first] + [r async for r in stream]
    assert rest == list(range(100))
    assert most <= 3


async def test_ordered_map_makes_no_task_for_items_without_work():
    calls: list[int] = []

    async def work(n: int) -> int:
        calls.append(n)
        return n

    pulled: list[int] = []
    out = [
        r
        async for r in ordered_map(
            numbers(50, pulled), work, depth=2, needs_work=lambda n: n % 10 == 0, done=lambda n: -n
        )
    ]
    assert calls == [0, 10, 20, 30, 40]
    assert out == [n if n % 10 == 0 else -n for n in range(50)]


async def test_ordered_map_raises_in_turn_and_cancels_the_rest():
    cancelled: list[int] = []

    async def work(n: int) -> int:
        if n == 2:
            raise RuntimeError("boom")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def fast_first(n: int) -> int:
        return n if n < 2 else await work(n)

    got: list[int] = []

    async def consume() -> None:
        async for r in ordered_map(
            numbers(10, []), fast_first, depth=4, needs_work=lambda n: True, done=lambda n: n
        ):
            got.append(r)

    with pytest.raises(RuntimeError, match="boom"):
        await consume()
    assert got == [0, 1]
    assert cancelled  # what was in flight behind it was cancelled, not left running


# ---------------------------------------------------------------------- apply_delivered
def test_apply_delivered_records_spans_pending_missing_foreign_and_cursor():
    spans = make_batch(2)
    batch = Batch(spans=spans, last_position="cursor-9")
    batch.entries = [
        Entry("s1", Kind.SPAN, "run-a", "agent", span_index=0, trace_id="t1"),
        Entry("s2", Kind.SPAN, "run-b", "agent", span_index=1, trace_id="t2"),
        Entry(
            "s3",
            Kind.AWAITING,
            "run-a",
            pending=PendingStep(step_id="s3", run_id="run-a", first_seen=5.0, attempts=2),
        ),
        Entry("s4", Kind.MISSING, "run-a", "agent"),
        Entry("s5", Kind.FOREIGN, "run-a", "agent"),
        Entry("s6", Kind.REPORTED, "run-a"),
    ]
    state = StreamState(cursor="cursor-1")
    state.pending["s4"] = PendingStep(step_id="s4", run_id="run-a", first_seen=1.0)
    state.pending["s6"] = PendingStep(step_id="s6", run_id="run-a", first_seen=1.0)
    missing: list[str] = []
    apply_delivered(
        batch,
        state,
        owns_run=lambda run_id: run_id == "run-a",
        on_missing=lambda e: missing.append(e.step_id),
    )
    assert state.cursor == "cursor-9"
    assert state.delivered == 2
    assert set(state.pending) == {"s3"}
    assert state.pending["s3"].attempts == 2
    assert missing == ["s4"]
    assert list(state.open_runs) == ["run-a"]  # run-b belongs to another shard
    run = state.open_runs["run-a"]
    assert run.step_ids == ["s1", "s4", "s5"]
    assert run.first_start_ns == spans[0].start_time
    assert run.last_end_ns == spans[0].end_time
    assert batch.trace_ids() == ["t1", "t2"]


def test_apply_delivered_without_position_keeps_the_cursor():
    state = StreamState(cursor="c")
    apply_delivered(Batch(), state, owns_run=lambda _: True, on_missing=lambda e: None)
    assert state.cursor == "c"
    assert Batch().empty


# ---------------------------------------------------------------------- SingleFlight
async def test_single_flight_shares_one_load_and_survives_a_cancelled_waiter():
    loads = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal loads
        loads += 1
        await release.wait()
        return "value"

    cache: SingleFlight[str, str] = SingleFlight(max_size=2)
    first = asyncio.ensure_future(cache.get("k", load))
    second = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "value"
    assert loads == 1
    assert cache.cached("k") == "value"
    assert await cache.get("k", load) == "value"
    assert loads == 1


async def test_single_flight_does_not_cache_failures_and_is_bounded():
    attempts = 0

    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ValueError("once")
        return attempts

    cache: SingleFlight[str, int] = SingleFlight(max_size=2)
    with pytest.raises(ValueError, match="once"):
        await cache.get("k", flaky)
    assert await cache.get("k", flaky) == 2
    cache.put("a", 1)
    cache.put("b", 2)
    assert "k" not in cache
    assert len(cache) == 2
    assert cache.cached("missing", -1) == -1


# ---------------------------------------------------------------------- RateLimitedLog
def test_rate_limited_log_once_per_interval_with_repeats(caplog):
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelimit"), interval=60, clock=lambda: now[0], count_repeats=True
    )
    caplog.set_level(logging.DEBUG, logger="test.ratelimit")
    assert log.warning("k", "down %s", "x")
    for _ in range(3):
        now[0] += 10
        assert not log.warning("k", "down %s", "x")
    assert log.warning("other", "another key")
    now[0] += 31
    assert log.warning("k", "down %s", "x")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["down x", "another key", "down x (and 3 more times in the last 60s)"]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 3
    log.reset()
    assert log.warning("k", "down %s", "x")
