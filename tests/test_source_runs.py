"""RunLookup: runs from pages of the runs list, direct lookups where the list cannot help."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from exporter.errors import SourceHTTPError
from exporter.models import Run
from exporter.source import RunLookup, StepFilter

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class _Client:
    """The two calls RunLookup makes, over an in-memory list of runs (oldest first)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.gets: list[str] = []
        self.listings: list[str | None] = []
        self.listed = 0

    async def get_run(self, run_id: str) -> Run:
        self.gets.append(run_id)
        for run in self.runs:
            if run.id == run_id:
                return run
        raise SourceHTTPError(f"/v1/runs/{run_id}", 404)

    async def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]:
        self.listings.append(after.id if after else None)
        index = next(i for i, r in enumerate(self.runs) if r.id == after.id) + 1 if after else 0
        for run in self.runs[index:]:
            self.listed += 1
            yield run


def _runs(n: int) -> list[Run]:
    return [
        Run(id=f"run-{i}", status="completed", created_at=T0 + timedelta(seconds=i))
        for i in range(n)
    ]


async def test_a_backlog_costs_one_direct_lookup_then_reads_the_list():
    client = _Client(_runs(50))
    lookup = RunLookup(client)
    for i in range(50):
        run = await lookup.get(f"run-{i}", not_after=T0 + timedelta(seconds=i, milliseconds=5))
        assert run is not None
        assert run.id == f"run-{i}"
    assert client.gets == ["run-0"]
    assert client.listings == ["run-0"]
    await lookup.aclose()


async def test_a_run_not_ahead_in_the_list_is_asked_directly_without_reading_far():
    client = _Client(_runs(100))
    lookup = RunLookup(client)
    await lookup.get("run-50")
    # run-10 was created before the list position: reading stops at the step's time.
    run = await lookup.get("run-10", not_after=T0 + timedelta(seconds=51))
    assert run is not None
    assert client.gets == ["run-50", "run-10"]
    assert client.listed <= 2


async def test_unknown_run_is_none():
    client = _Client(_runs(3))
    assert await RunLookup(client).get("run-x") is None


async def test_a_list_that_runs_dry_is_read_less_and_less_often():
    client = _Client(_runs(40))
    _empty.calls = []  # type: ignore[attr-defined]
    client.list_runs = _empty  # type: ignore[method-assign]  # e.g. runs outside its filters
    lookup = RunLookup(client)
    for i in range(40):
        assert await lookup.get(f"run-{i}") is not None
    assert len(client.gets) == 40
    # After each dry read the next misses go direct, twice as many each time.
    assert len(_empty.calls) <= 6  # type: ignore[attr-defined]


async def _empty(filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]:
    _empty.calls.append(after.id if after else None)  # type: ignore[attr-defined]
    return
    yield


async def test_put_seeds_the_cache_and_the_cache_is_bounded():
    client = _Client([])
    lookup = RunLookup(client, cache_size=3)
    for run in _runs(5):
        lookup.put(run)
    assert await lookup.get("run-4") is not None
    assert await lookup.get("run-0") is None  # evicted, and Letta does not know it
    assert client.gets == ["run-0"]
