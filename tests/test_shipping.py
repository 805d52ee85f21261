"""The Shipper against a fake DeliveringExporter: retries, Retry-After as a floor, deadlines."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from exporter.errors import Stopped, UndeliveredError
from exporter.shipping import ExportSummary, Shipper
from exporter.sink import DeliveringExporter, Delivery
from exporter.telemetry import DeadLetter, Metrics

from ._sink_spans import make_batch


class ScriptedExporter(DeliveringExporter):
    """Answers each attempt with the next scripted Delivery (the last one repeats)."""

    def __init__(self, *answers: Delivery) -> None:
        super().__init__(target="scripted")
        self.answers = list(answers)
        self.attempts: list[int] = []

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        self.attempts.append(len(spans))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class FakeTime:
    """A monotonic clock that moves only when the shipper waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def shipper_for(
    exporter: DeliveringExporter,
    tmp_path: Path,
    time: FakeTime,
    *,
    jitter=max,
    deadline: float | None = None,
    stop: asyncio.Event | None = None,
    **options,
) -> tuple[Shipper, Metrics]:
    metrics = Metrics()
    shipper = Shipper(
        exporter=exporter,
        metrics=metrics,
        dead_letter=DeadLetter(tmp_path / "dead.jsonl"),
        stop=stop or asyncio.Event(),
        deadline_seconds=deadline,
        retry_initial_seconds=options.pop("initial", 1.0),
        retry_max_seconds=options.pop("maximum", 8.0),
        sleep=time.sleep,
        clock=time.clock,
        jitter=jitter,
        **options,
    )
    return shipper, metrics


FAIL = Delivery(delivered=False, message="collector down")
OK = Delivery(delivered=True)


async def test_accepted_batch_is_counted_once(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(OK)
    shipper, metrics = shipper_for(exporter, tmp_path, time)
    summary = ExportSummary()
    assert await shipper.ship(make_batch(3), ["a", "b", "c"], summary)
    assert summary.exported == 3
    assert exporter.attempts == [3]
    assert time.waits == []
    assert metrics.value("letta_exporter_traces_exported_total") == 3


async def test_retries_back_off_exponentially_with_jitter_under_the_cap(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(FAIL, FAIL, FAIL, FAIL, FAIL, OK)
    beats: list[float] = []
    shipper, metrics = shipper_for(exporter, tmp_path, time, jitter=max)
    summary = ExportSummary()
    await shipper.ship(make_batch(2), ["a", "b"], summary, on_wait=lambda: beats.append(1))
    # The highest draw each time: 1, 2, 4, 8, then capped at 8.
    assert time.waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(exporter.attempts) == 6
    assert len(beats) == 5
    assert metrics.value("letta_exporter_retries_total", hop="collector") == 5
    assert summary.exported == 2


async def test_retry_after_is_a_floor_with_jitter_on_top(tmp_path):
    """A collector asking for 5 s is never retried sooner, whatever the jitter draws."""
    for jitter, expected in ((min, 5.0), (max, 6.0)):
        time = FakeTime()
        exporter = ScriptedExporter(
            Delivery(delivered=False, message="slow down", retry_after=5.0), OK
        )
        shipper, _ = shipper_for(exporter, tmp_path, time, jitter=jitter)
        await shipper.ship(make_batch(1), ["a"], ExportSummary())
        assert time.waits == [expected]
    # With the real random draw: never before the server allows, never long after.
    time = FakeTime()
    exporter = ScriptedExporter(*[Delivery(delivered=False, retry_after=5.0)] * 20, OK)
    shipper, _ = shipper_for(exporter, tmp_path, time, jitter=random.uniform)
    await shipper.ship(make_batch(1), ["a"], ExportSummary())
    assert len(time.waits) == 20
    assert all(5.0 <= wait <= 5.0 + 8.0 for wait in time.waits)


async def test_retry_after_beyond_four_caps_is_cut_there(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(Delivery(delivered=False, retry_after=3600.0), OK)
    shipper, _ = shipper_for(exporter, tmp_path, time, jitter=min, maximum=8.0)
    await shipper.ship(make_batch(1), ["a"], ExportSummary())
    assert time.waits == [32.0]


async def test_deadline_gives_up_with_the_ids_and_the_last_reason(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(FAIL)
    shipper, _ = shipper_for(exporter, tmp_path, time, deadline=5.0, jitter=max)
    with pytest.raises(UndeliveredError) as raised:
        await shipper.ship(make_batch(2), ["t-1", "t-2"], ExportSummary())
    assert raised.value.trace_ids == ["t-1", "t-2"]
    assert "collector down" in str(raised.value)
    # 1 + 2, then the rest of the deadline (not the 4 s the backoff would draw).
    assert time.waits == [1.0, 2.0, 2.0]
    assert len(exporter.attempts) == 4


async def test_deadline_shortens_a_long_retry_after(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(Delivery(delivered=False, retry_after=30.0), OK)
    shipper, _ = shipper_for(exporter, tmp_path, time, deadline=10.0, jitter=min)
    await shipper.ship(make_batch(1), ["a"], ExportSummary())
    assert time.waits == [10.0]


async def test_refused_for_good_is_dead_lettered_not_retried(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(Delivery(delivered=False, permanent=True, message="bad request"))
    shipper, metrics = shipper_for(exporter, tmp_path, time)
    summary = ExportSummary()
    assert not await shipper.ship(make_batch(2), ["a", "b"], summary)
    assert time.waits == []
    assert summary.undelivered == 2
    assert metrics.value("letta_exporter_traces_failed_total", reason="refused") == 2
    (line,) = (tmp_path / "dead.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["reason"] == "refused"
    assert record["ids"] == ["a", "b"]
    assert record["otlp_json"]


async def test_partial_success_counts_the_rejected_spans(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(Delivery(delivered=True, rejected=1, message="one too big"))
    shipper, metrics = shipper_for(exporter, tmp_path, time)
    summary = ExportSummary()
    assert await shipper.ship(make_batch(3), ["a", "b", "c"], summary)
    assert summary.rejected == 1
    assert metrics.value("letta_exporter_spans_rejected_total") == 1


async def test_stop_during_a_backoff_raises_stopped(tmp_path):
    time = FakeTime()
    stop = asyncio.Event()
    exporter = ScriptedExporter(FAIL)

    async def sleep_then_stop(seconds: float) -> None:
        await time.sleep(seconds)
        stop.set()

    shipper, _ = shipper_for(exporter, tmp_path, time, stop=stop)
    shipper._sleep = sleep_then_stop
    with pytest.raises(Stopped):
        await shipper.ship(make_batch(1), ["a"], ExportSummary())
    assert len(exporter.attempts) == 1


async def test_dry_run_sends_nothing(tmp_path):
    time = FakeTime()
    exporter = ScriptedExporter(FAIL)
    shipper, _ = shipper_for(exporter, tmp_path, time, dry_run=True)
    summary = ExportSummary()
    assert await shipper.ship(make_batch(2), ["a", "b"], summary)
    assert exporter.attempts == []
    assert summary.exported == 2
