"""Step discovery against the fake Letta: steps list where it works, runs where it does not."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from exporter.errors import SourceHTTPError
from exporter.source import LettaClient, RetryPolicy, StepFilter
from testkit import FakeLetta, LettaStore
from testkit.fake_letta import _Answer, _Query
from tests.conftest import LETTA

FAST = RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02)
START = datetime(2026, 3, 1, tzinfo=UTC)
DISCOVERY_LOGGER = "exporter.source"  # discovery and its runs listing (_discovery, _runs_list)


def client_for(fake: FakeLetta, **options) -> LettaClient:
    options.setdefault("retry", FAST)
    return LettaClient(httpx.AsyncClient(base_url=fake.url), **options)


async def collect(iterator):
    return [item async for item in iterator]


def list_requests(fake: FakeLetta, path: str = r"^/v1/steps/$"):
    return [r for r in fake.requests_to(path) if r.param("limit") != "1"]


@pytest.fixture(scope="module")
def old():
    with FakeLetta.from_fixtures(LETTA, flavour="0.16.8") as fake:
        yield fake


@pytest.fixture(scope="module")
def cloud():
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean(request):
    for name in ("old", "cloud"):
        if name in request.fixturenames:
            fake = request.getfixturevalue(name)
            fake.clear_faults()
            fake.clear_requests()


@pytest.fixture
def generated():
    store = LettaStore()
    store.generate(95, agents=3, steps_per_run=4, start=START)
    with FakeLetta(store, flavour="cloud") as fake:
        yield fake


def runs_order(fake: FakeLetta) -> list[str]:
    """Step ids in runs-discovery order: run by run, each run's steps oldest first."""
    return [s for run in fake.store.run_ids() for s in fake.store.run_step_ids(run)]


# ---------------------------------------------------------------------- steps mode
async def test_steps_mode_pages_lazily_through_every_step(generated):
    async with client_for(generated, page_size=10) as letta:
        found = letta.discover(StepFilter())
        first = [await anext(found) for _ in range(3)]
        assert len(list_requests(generated)) == 1  # one page asked, not the whole list
        rest = await collect(found)
    steps = first + rest
    assert [d.step.id for d in steps] == generated.store.step_ids()
    assert [d.position for d in steps] == generated.store.step_ids()
    pages = list_requests(generated)
    assert len(pages) == 11  # 10 pages of 10 (the last one short) + the empty one
    assert all(r.param("order") == "asc" and r.param("limit") == "10" for r in pages)
    assert pages[1].param("after") == steps[9].step.id


async def test_steps_mode_filters_go_to_the_server(generated):
    store = generated.store
    ids = store.step_ids()
    agents = sorted({store._steps[s].agent_id for s in ids})
    since, until = START + timedelta(milliseconds=100), START + timedelta(milliseconds=400)
    async with client_for(generated, page_size=7) as letta:
        window = await collect(letta.discover(StepFilter(since=since, until=until)))
        one = await collect(letta.discover(StepFilter(agent_ids=(agents[0],))))
        two = await collect(letta.discover(StepFilter(agent_ids=tuple(agents[:2]))))
        model = await collect(letta.discover(StepFilter(model="gpt-4o-mini", project_id="p-1")))
    assert [d.step.id for d in window] == ids[11:40]  # strictly after since, before until
    assert {d.step.agent_id for d in one} == {agents[0]}
    assert len(one) == sum(1 for s in ids if store._steps[s].agent_id == agents[0])
    assert {d.step.agent_id for d in two} == set(agents[:2])
    assert [d.step.id for d in two] == [s for s in ids if store._steps[s].agent_id in agents[:2]]
    assert model == []  # the generated steps have no project
    sent = list_requests(generated)
    assert any(r.param("start_date") == since.isoformat() for r in sent)
    assert any(r.param("end_date") == until.isoformat() for r in sent)
    assert any(r.param("agent_id") == agents[0] for r in sent)
    # The steps list takes one agent_id: with two, the client filters.
    assert not any("agent_id" in r.query and r.param("agent_id") != agents[0] for r in sent)
    assert any(r.param("model") == "gpt-4o-mini" and r.param("project_id") == "p-1" for r in sent)


async def test_steps_mode_resume_continues_right_after_the_position(cloud):
    async with client_for(cloud, page_size=4) as letta:
        everything = await collect(letta.discover(StepFilter()))
        assert len(everything) == 23
        for index in (0, 3, 4, 11, 21, 22):
            rest = await collect(letta.discover(StepFilter(), resume=everything[index].position))
            assert [d.step.id for d in rest] == [d.step.id for d in everything[index + 1 :]]


async def test_discovery_mode_steps_is_logged_once(cloud, caplog):
    caplog.set_level(logging.INFO, logger=DISCOVERY_LOGGER)
    async with client_for(cloud) as letta:
        assert await letta.discovery_mode() == "steps"
        assert await letta.discovery_mode() == "steps"
        await collect(letta.discover(StepFilter()))
    lines = [r for r in caplog.records if "step discovery" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "steps" in lines[0].getMessage()
    probes = [r for r in cloud.requests_to(r"^/v1/steps/$") if r.param("limit") == "1"]
    assert len(probes) == 1
    assert probes[0].param("order") == "asc"


# ---------------------------------------------------------------------- runs mode (0.16.8)
async def test_0_16_8_falls_back_to_runs_and_says_why_in_one_line(old, caplog):
    caplog.set_level(logging.INFO, logger=DISCOVERY_LOGGER)
    async with client_for(old, page_size=5) as letta:
        assert await letta.discovery_mode() == "runs"
        found = await collect(letta.discover(StepFilter()))
        again = await collect(letta.discover(StepFilter()))
    assert [d.step.id for d in found] == runs_order(old)
    assert len(found) == 23
    assert again == found
    lines = [r for r in caplog.records if "step discovery" in r.getMessage()]
    assert len(lines) == 1
    assert "runs" in lines[0].getMessage()
    assert "HTTP 400" in lines[0].getMessage()
    assert len(old.requests_to(r"^/v1/steps/$")) == 1  # probed once only


async def test_swapped_runs_cursors_are_detected_and_worked_around(old, caplog):
    caplog.set_level(logging.INFO, logger=DISCOVERY_LOGGER)
    async with client_for(old, page_size=4) as letta:
        runs = await collect(letta.list_runs(StepFilter()))
        again = await collect(letta.list_runs(StepFilter()))
    assert [r.id for r in runs] == old.store.run_ids()
    assert [r.id for r in again] == [r.id for r in runs]
    created = [r.created_at for r in runs]
    assert created == sorted(created)
    swapped = [r for r in caplog.records if "swapped" in r.getMessage()]
    assert len(swapped) == 1
    # 18 runs in pages of 4: 5 pages + an empty end, twice, plus one probe of after=.
    assert len(old.requests_to(r"^/v1/runs/$")) <= 2 * 6 + 1


class _IgnoresCursors(FakeLetta):
    """A broken server whose runs list always answers the first page."""

    def _r_list_runs(self, query: _Query) -> _Answer:
        for name in ("after", "before"):
            query._q.pop(name, None)  # type: ignore[attr-defined]
        return super()._r_list_runs(query)


async def test_runs_list_that_never_progresses_stops_cleanly(caplog):
    caplog.set_level(logging.INFO, logger=DISCOVERY_LOGGER)
    with _IgnoresCursors(LettaStore.from_fixtures(LETTA), flavour="cloud") as broken:
        async with client_for(broken, page_size=5) as letta:
            runs = await collect(letta.list_runs(StepFilter()))
        assert [r.id for r in runs] == broken.store.run_ids()[:5]  # each once, then stop
        assert len(broken.requests_to(r"^/v1/runs/$")) < 10
    assert any("makes no progress" in r.getMessage() for r in caplog.records)


async def test_runs_mode_resume_from_every_position(old):
    async with client_for(old, page_size=3) as letta:
        everything = await collect(letta.discover(StepFilter()))
        for index, found in enumerate(everything):
            rest = await collect(letta.discover(StepFilter(), resume=found.position))
            assert [d.step.id for d in rest] == [d.step.id for d in everything[index + 1 :]]
    assert everything[0].position.startswith(
        f"{everything[0].step.run_id}/{everything[0].step.id}/"
    )


async def test_runs_mode_resume_sees_steps_and_runs_added_later():
    store = LettaStore()
    store.generate(6, agents=1, steps_per_run=2, start=START)
    with FakeLetta(store, flavour="0.16.8") as fake:
        async with client_for(fake, page_size=2) as letta:
            first = await collect(letta.discover(StepFilter()))
            assert len(first) == 6
            last = first[-1]
            late_step = store.add_step(
                {
                    "id": "step-11111111-1111-4111-8111-111111111111",
                    "run_id": last.step.run_id,
                    "agent_id": last.step.agent_id,
                },
                created_at=START + timedelta(seconds=1),
            )
            new_runs = store.generate(3, agents=1, steps_per_run=2, seed=7)
            rest = await collect(letta.discover(StepFilter(), resume=last.position))
    assert [d.step.id for d in rest] == [late_step, *new_runs]


async def test_positions_resume_across_modes(old, cloud):
    async with client_for(cloud) as letta:
        by_steps = await collect(letta.discover(StepFilter()))
    async with client_for(old) as letta:
        by_runs = await collect(letta.discover(StepFilter()))
        # A steps-mode position (a bare step id) resumed through the runs.
        pick = by_runs[9]
        rest = await collect(letta.discover(StepFilter(), resume=pick.step.id))
        assert [d.step.id for d in rest] == [d.step.id for d in by_runs[10:]]
    async with client_for(cloud) as letta:
        # A runs-mode position resumed through the steps list: after its step.
        index = next(i for i, d in enumerate(by_steps) if d.step.id == pick.step.id)
        rest = await collect(letta.discover(StepFilter(), resume=pick.position))
        assert [d.step.id for d in rest] == [d.step.id for d in by_steps[index + 1 :]]


async def test_resume_from_a_run_that_is_gone_continues_after_its_time(old, caplog):
    caplog.set_level(logging.WARNING, logger=DISCOVERY_LOGGER)
    runs = old.store.run_ids()
    fifth = old.store._runs[runs[4]]
    stamp = datetime.fromisoformat(fifth.data["created_at"].replace("Z", "+00:00"))
    position = (
        "run-00000000-0000-4000-8000-000000000000/"
        f"step-00000000-0000-4000-8000-000000000000/{stamp.isoformat()}"
    )
    async with client_for(old, page_size=4) as letta:
        rest = await collect(letta.discover(StepFilter(), resume=position))
    expected = [s for run in runs[5:] for s in old.store.run_step_ids(run)]
    assert [d.step.id for d in rest] == expected
    assert any("gone" in r.getMessage() for r in caplog.records)


async def test_runs_mode_filters(old):
    runs = old.store.run_ids()
    created = {r: old.store._runs[r].data["created_at"] for r in runs}
    since = datetime.fromisoformat(created[runs[2]].replace("Z", "+00:00"))
    until = datetime.fromisoformat(created[runs[8]].replace("Z", "+00:00"))
    agents = sorted({old.store._runs[r].agent_id for r in runs})
    async with client_for(old, page_size=4) as letta:
        window = await collect(letta.discover(StepFilter(since=since, until=until)))
        two = await collect(letta.discover(StepFilter(agent_ids=tuple(agents[1:]))))
        one = await collect(letta.list_runs(StepFilter(agent_ids=(agents[0],))))
        claude = await collect(letta.discover(StepFilter(model="claude-sonnet-4-5-20250929")))
    # since/until apply to the run's created_at (strictly), steps carry no time on 0.16.8.
    assert [d.step.id for d in window] == [s for r in runs[3:8] for s in old.store.run_step_ids(r)]
    assert {d.step.agent_id for d in two} == set(agents[1:])
    assert len(two) == sum(
        len(old.store.run_step_ids(r)) for r in runs if old.store._runs[r].agent_id in agents[1:]
    )
    assert {r.agent_id for r in one} == {agents[0]}
    assert claude
    assert {d.step.model for d in claude} == {"claude-sonnet-4-5-20250929"}
    sent = old.requests_to(r"^/v1/runs/$")
    assert any(r.query.get("agent_ids") == tuple(agents[1:]) for r in sent)
    assert any(r.param("agent_id") == agents[0] for r in sent)


async def test_runs_mode_is_lazy(old):
    async with client_for(old, page_size=5) as letta:
        found = letta.discover(StepFilter())
        await anext(found)
        await found.aclose()
    assert len(old.requests_to(r"^/v1/runs/$")) == 1
    assert len(old.requests_to(r"^/v1/runs/.+/steps$")) == 1


async def test_list_run_steps_pages_oldest_first(old):
    run = "run-18d995af-8246-4b05-8ee7-424800864342"
    async with client_for(old, page_size=1) as letta:
        steps = await collect(letta.list_run_steps(run))
        after = await collect(letta.list_run_steps(run, after=steps[0].id))
    assert [s.id for s in steps] == old.store.run_step_ids(run)
    assert [s.id for s in after] == [steps[1].id]


# ---------------------------------------------------------------------- choosing the mode
@pytest.mark.parametrize("status", [404, 405, 422])
async def test_probe_failures_that_mean_no_steps_list_fall_back_to_runs(cloud, status):
    cloud.fail(status, path=r"^/v1/steps/$")
    async with client_for(cloud) as letta:
        assert await letta.discovery_mode() == "runs"
        assert len(await collect(letta.discover(StepFilter()))) == 23


@pytest.mark.parametrize("status", [500, 401])
async def test_probe_errors_that_are_not_about_the_route_are_raised(cloud, status):
    cloud.fail(status, times=None, path=r"^/v1/steps/$")
    async with client_for(cloud) as letta:
        with pytest.raises(SourceHTTPError) as raised:
            await letta.discovery_mode()
    assert raised.value.status_code == status


async def test_forced_modes(old, cloud, caplog):
    caplog.set_level(logging.INFO, logger=DISCOVERY_LOGGER)
    async with client_for(cloud, discovery="runs") as letta:
        assert await letta.discovery_mode() == "runs"
        assert [d.step.id for d in await collect(letta.discover(StepFilter()))] == runs_order(cloud)
    assert not cloud.requests_to(r"^/v1/steps/$")  # no probe when forced
    assert any("set by the discovery setting" in r.getMessage() for r in caplog.records)
    async with client_for(old, discovery="steps") as letta:
        with pytest.raises(SourceHTTPError) as raised:
            await collect(letta.discover(StepFilter()))
    assert raised.value.status_code == 400


async def test_naive_filter_times_are_utc(generated):
    since = (START + timedelta(milliseconds=100)).replace(tzinfo=None)
    async with client_for(generated) as letta:
        found = await collect(letta.discover(StepFilter(since=since)))
    assert [d.step.id for d in found] == generated.store.step_ids()[11:]


async def test_a_run_deleted_meanwhile_is_skipped(old, caplog):
    caplog.set_level(logging.WARNING, logger=DISCOVERY_LOGGER)
    gone = old.store.run_ids()[3]
    old.fail(404, times=None, path=rf"^/v1/runs/{gone}/steps$")
    async with client_for(old) as letta:
        found = await collect(letta.discover(StepFilter()))
    assert [d.step.id for d in found] == [
        s for run in old.store.run_ids() if run != gone for s in old.store.run_step_ids(run)
    ]
    assert any(gone in r.getMessage() for r in caplog.records)


async def test_no_runs_route_is_an_error_not_an_empty_pass(old):
    old.fail(404, times=None, path=r"^/v1/runs/$")
    async with client_for(old) as letta:
        with pytest.raises(SourceHTTPError) as raised:
            await collect(letta.discover(StepFilter()))
    assert raised.value.status_code == 404
