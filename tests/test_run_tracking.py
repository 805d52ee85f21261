"""Run tracking: when a run's parent span is due, with a fake clock (no I/O, no waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from exporter.checkpoint import OpenRun, PendingStep
from exporter.models import Run, Step
from exporter.run_tracking import LocalRuns, RunTracker, waiting_runs

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def step(step_id: str, run_id: str, at: datetime) -> Step:
    return Step(id=step_id, run_id=run_id, created_at=at)


def finished(run_id: str, completed: datetime, status: str = "completed") -> Run:
    return Run(
        id=run_id,
        status=status,
        created_at=completed - timedelta(seconds=30),
        completed_at=completed,
    )


def test_steps_order_a_finished_run_is_passed_once_discovery_is_beyond_the_margin():
    tracker = RunTracker(idle_seconds=None, clock=Clock())
    run = finished("run-1", T0)
    tracker.advance(step("s1", "run-1", T0 - timedelta(seconds=10)), run)
    assert not tracker.passed(run)
    tracker.advance(step("s2", "run-2", T0 + timedelta(seconds=5)), None)
    assert not tracker.passed(run)  # exactly at the margin: a late step may still come
    tracker.advance(step("s3", "run-2", T0 + timedelta(seconds=6)), None)
    assert tracker.passed(run)
    tracker.new_pass()
    assert not tracker.passed(run)  # a new pass starts at the cursor


def test_runs_order_a_run_is_passed_once_another_run_came():
    tracker = RunTracker(idle_seconds=None, clock=Clock())
    run = finished("run-1", T0)
    tracker.advance(step("s1", "run-1", T0), run, order="runs")
    assert not tracker.passed(run)
    tracker.advance(step("s2", "run-2", T0), None, order="runs")
    assert tracker.passed(run)


def test_due_now_needs_finished_passed_known_and_nothing_awaited():
    tracker = RunTracker(idle_seconds=None, clock=Clock())
    runs = {
        "done": finished("done", T0),
        "going": Run(id="going", status="running"),
        "gone": Run(id="gone", status="gone"),
        "held": finished("held", T0),
    }
    tracker.advance(step("s9", "other", T0 + timedelta(minutes=1)), None)
    open_runs = [OpenRun(run_id=r) for r in (*runs, "unknown")]
    pending = {"p": PendingStep(step_id="p", run_id="held", first_seen=0.0)}
    due = tracker.due_now(open_runs, pending, runs.get)
    assert [o.run_id for o, _ in due] == ["done", "gone"]


def test_due_at_end_finished_or_gone_or_final():
    tracker = RunTracker(idle_seconds=None, clock=Clock())
    waiting = waiting_runs({"p": PendingStep(step_id="p", run_id="held", first_seen=0.0)})
    assert tracker.due_at_end(OpenRun("a"), finished("a", T0), waiting, final=False)
    assert not tracker.due_at_end(OpenRun("b"), Run(id="b", status="running"), waiting, final=False)
    assert tracker.due_at_end(OpenRun("b"), Run(id="b", status="running"), waiting, final=True)
    assert tracker.due_at_end(OpenRun("g"), Run(id="g", status="gone"), waiting, final=False)
    assert not tracker.due_at_end(OpenRun("held"), finished("held", T0), waiting, final=False)
    # No status known and the idle rule off (the API source): only at the end of the export.
    assert not tracker.due_at_end(OpenRun("n"), Run(id="n"), waiting, final=False)


def test_idle_rule_closes_a_run_without_status_after_the_idle_time():
    clock = Clock()
    tracker = RunTracker(idle_seconds=60.0, clock=clock)
    tracker.seen("run-1")
    unknown = {"run-1": Run(id="run-1")}
    open_runs = [OpenRun(run_id="run-1")]
    assert tracker.due_now(open_runs, {}, unknown.get) == []
    clock.now += 59.9
    assert tracker.due_now(open_runs, {}, unknown.get) == []
    tracker.seen("run-1")  # another step: the wait starts again
    clock.now += 59.9
    assert not tracker.idle("run-1")
    clock.now += 0.1
    assert [o.run_id for o, _ in tracker.due_now(open_runs, {}, unknown.get)] == ["run-1"]
    assert tracker.due_at_end(open_runs[0], unknown["run-1"], set(), final=False)
    # A step still awaited holds it open however idle.
    pending = {"p": PendingStep(step_id="p", run_id="run-1", first_seen=0.0)}
    assert tracker.due_now(open_runs, pending, unknown.get) == []
    tracker.closed("run-1")
    assert tracker.idle("run-1")


def test_idle_rule_does_not_touch_runs_with_a_status():
    clock = Clock()
    tracker = RunTracker(idle_seconds=1.0, clock=clock)
    going = Run(id="r", status="running")
    clock.now += 3600
    assert not tracker.due_at_end(OpenRun("r"), going, set(), final=False)


async def test_local_runs_know_what_events_carried():
    runs = LocalRuns()
    assert (await runs.run("r1")).status is None
    runs.remember(finished("r1", T0), None)
    assert (await runs.run("r1")).status == "completed"
    assert runs.cached_run("r2") == Run(id="r2")
    runs.forget("r1")
    assert (await runs.run("r1")).status is None
    assert await runs.agent("a") is None
