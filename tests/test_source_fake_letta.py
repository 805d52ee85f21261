"""The fake Letta server answers like the recorded 0.16.8 server (and like a working one)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from exporter.models import Agent, RunMetrics, Step, StepMetrics, parse_record, parse_trace_body
from testkit import FakeLetta, Fault, LettaStore
from tests.conftest import LETTA

STEP_FILES = sorted((LETTA / "steps").glob("*.json"))
RUN_STEP_FILES = sorted((LETTA / "runs" / "run_steps").glob("*.json"))


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()]


def recorded_ids(name: str) -> list[str]:
    return [item["id"] for item in json.loads((LETTA / "runs" / name).read_bytes())]


@pytest.fixture(scope="module")
def old():
    with FakeLetta.from_fixtures(LETTA, flavour="0.16.8") as fake:
        yield fake


@pytest.fixture(scope="module")
def cloud():
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as fake:
        yield fake


@pytest.fixture
def http(old):
    with httpx.Client(base_url=old.url) as client:
        yield client


@pytest.fixture
def chttp(cloud):
    with httpx.Client(base_url=cloud.url) as client:
        yield client


# ---------------------------------------------------------------------- as recorded
def test_fixture_store_holds_every_recorded_step_and_run():
    store = LettaStore.from_fixtures(LETTA)
    assert sorted(store.step_ids()) == sorted(p.stem for p in STEP_FILES)
    assert sorted(store.run_ids()) == sorted(p.stem for p in RUN_STEP_FILES)


@pytest.mark.parametrize(
    ("params", "fixture"),
    [
        ({"order": "asc", "limit": "1"}, "steps_list_400.json"),
        ({}, "steps_list_variants/default_no_params.json"),
        ({"order": "desc", "limit": "5"}, "steps_list_variants/desc_limit5.json"),
        (
            {"agent_id": "agent-d027b87e-6c15-4e07-a892-d15d95d77843"},
            "steps_list_variants/agent_id_filter.json",
        ),
        ({"order": "sideways"}, "steps_list_variants/bad_order_value.json"),
        ({"limit": "abc"}, "steps_list_variants/limit_not_int.json"),
    ],
)
def test_steps_list_fails_like_0_16_8(http, params, fixture):
    response = http.get("/v1/steps/", params=params)
    expected = json.loads((LETTA / "errors" / fixture).read_bytes())
    assert response.status_code == (422 if "trace_id" in expected else 400)
    assert response.json() == expected


def test_runs_list_cursors_are_swapped_like_0_16_8(http):
    first = ids(http.get("/v1/runs/", params={"order": "asc", "limit": 10}))
    assert (
        first == recorded_ids("pagination/asc_limit10.json") == recorded_ids("runs_list_page1.json")
    )
    tenth = first[9]
    after = http.get("/v1/runs/", params={"order": "asc", "limit": 5, "after": tenth})
    assert ids(after) == recorded_ids("pagination/asc_limit5_after_10th.json")
    desc = http.get("/v1/runs/", params={"order": "desc", "limit": 5, "before": tenth})
    assert ids(desc) == recorded_ids("pagination/desc_limit5_before_10th.json")
    page2 = http.get("/v1/runs/", params={"order": "asc", "limit": 10, "after": tenth})
    assert ids(page2) == recorded_ids("runs_list_page2.json")
    # before= is the one that moves forward on this version.
    forward = ids(http.get("/v1/runs/", params={"order": "asc", "limit": 10, "before": tenth}))
    assert forward
    assert not set(forward) & set(first)


def test_bad_and_unknown_ids_answer_like_0_16_8(http):
    recorded = json.loads((LETTA / "errors" / "bad_ids.json").read_bytes())
    for path, expected in recorded.items():
        response = http.get(path)
        assert response.status_code == expected["status"], path
        if expected["status"] != 404:  # 404 texts name the recording's user; the rest match
            assert response.json() == expected["body"], path


@pytest.mark.parametrize("path", STEP_FILES, ids=lambda p: p.stem[:13])
def test_single_step_routes_serve_the_recording(http, path):
    recorded = json.loads(path.read_bytes())
    step_id = path.stem
    assert http.get(f"/v1/steps/{step_id}").json() == recorded["step"]
    assert http.get(f"/v1/steps/{step_id}/trace").json() == recorded["trace"]
    assert http.get(f"/v1/steps/{step_id}/metrics").json() == recorded["metrics"]


@pytest.mark.parametrize("path", RUN_STEP_FILES, ids=lambda p: p.stem[:12])
def test_run_steps_route_serves_the_recording(http, path):
    recorded = json.loads(path.read_bytes())
    response = http.get(f"/v1/runs/{path.stem}/steps", params={"order": "asc"})
    assert ids(response) == [s["id"] for s in recorded]
    assert response.json() == recorded


def test_run_agent_and_metrics_routes(http):
    retrieved = json.loads((LETTA / "runs" / "run_retrieve_example.json").read_bytes())
    listed = json.loads((LETTA / "runs" / "runs_list_page1.json").read_bytes())[0]
    served = http.get(f"/v1/runs/{retrieved['id']}").json()
    # One body per run: the list's (the recorded retrieve left total_duration_ns out).
    assert served == listed
    assert served.keys() == retrieved.keys()
    metrics = json.loads((LETTA / "runs" / "run_metrics_example.json").read_bytes())
    assert http.get(f"/v1/runs/{retrieved['id']}/metrics").json() == metrics
    other = next(r for r in LettaStore.from_fixtures(LETTA).run_ids() if r != retrieved["id"])
    made_up = parse_record(RunMetrics, http.get(f"/v1/runs/{other}/metrics").content)
    assert made_up.num_steps
    assert made_up.run_start_ns
    agent = parse_record(Agent, http.get(f"/v1/agents/{retrieved['agent_id']}").content)
    assert agent.tags == ["team:support", "env:staging"]
    assert http.get("/v1/agents/agent-00000000-0000-4000-8000-000000000000").status_code == 404
    assert http.get("/v1/agents/nope").status_code == 422
    assert http.get("/v1/health/").json() == {"version": "0.16.8", "status": "ok"}
    assert http.get("/v1/nothing").status_code == 404


def test_run_steps_route_pages_correctly(http):
    run = "run-18d995af-8246-4b05-8ee7-424800864342"
    both = ids(http.get(f"/v1/runs/{run}/steps", params={"order": "asc"}))
    assert len(both) == 2
    assert ids(http.get(f"/v1/runs/{run}/steps", params={"order": "asc", "limit": 1})) == both[:1]
    after = http.get(f"/v1/runs/{run}/steps", params={"order": "asc", "after": both[0]})
    assert ids(after) == both[1:]
    assert ids(http.get(f"/v1/runs/{run}/steps")) == both[::-1]  # default: newest first


# ---------------------------------------------------------------------- a working server
def test_cloud_steps_list_pages_by_creation_time(chttp, cloud):
    order = cloud.store.step_ids()
    assert ids(chttp.get("/v1/steps/", params={"order": "asc", "limit": 5})) == order[:5]
    after = chttp.get("/v1/steps/", params={"order": "asc", "limit": 5, "after": order[4]})
    assert ids(after) == order[5:10]
    before = chttp.get("/v1/steps/", params={"order": "asc", "limit": 3, "before": order[4]})
    assert ids(before) == order[:3]
    assert ids(chttp.get("/v1/steps/", params={"limit": 3})) == order[::-1][:3]
    desc_after = chttp.get("/v1/steps/", params={"order": "desc", "limit": 2, "after": order[4]})
    assert ids(desc_after) == [order[3], order[2]]
    unknown = "step-00000000-0000-4000-8000-000000000000"
    assert chttp.get("/v1/steps/", params={"after": unknown}).status_code == 404
    assert chttp.get("/v1/steps/", params={"limit": "x"}).status_code == 422


def test_cloud_steps_list_filters(chttp, cloud):
    agent = "agent-6e64c41a-6a29-4a4e-9f4d-0d39d4e3c2f5"
    steps = [parse_record(Step, json.dumps(json.loads(p.read_bytes())["step"])) for p in STEP_FILES]
    agent = next(s.agent_id for s in steps if s.model and s.model.startswith("claude"))
    by_agent = ids(chttp.get("/v1/steps/", params={"order": "asc", "agent_id": agent}))
    assert sorted(by_agent) == sorted(s.id for s in steps if s.agent_id == agent)
    by_model = ids(chttp.get("/v1/steps/", params={"model": "gpt-4.1", "limit": 100}))
    assert by_model == [s.id for s in steps if s.model == "gpt-4.1"]
    assert ids(chttp.get("/v1/steps/", params={"project_id": "proj-x"})) == []


def test_cloud_traces_carry_latency(chttp):
    step_id = STEP_FILES[1].stem
    trace = parse_trace_body(chttp.get(f"/v1/steps/{step_id}/trace").content)
    assert trace is not None
    assert trace.latency_ms is not None


def test_cloud_runs_list_cursors_are_right(chttp, cloud):
    runs = cloud.store.run_ids()
    page = ids(chttp.get("/v1/runs/", params={"order": "asc", "limit": 5, "after": runs[4]}))
    assert page == runs[5:10]


def test_generated_store_pages_quickly_and_filters_by_time():
    store = LettaStore()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    generated = store.generate(3000, agents=3, steps_per_run=3, start=start)
    assert store.step_ids() == generated
    assert len(store) == 3000
    with FakeLetta(store, flavour="cloud") as fake, httpx.Client(base_url=fake.url) as http:
        seen: list[str] = []
        after = None
        while True:
            params = {"order": "asc", "limit": 1000} | ({"after": after} if after else {})
            page = ids(http.get("/v1/steps/", params=params))
            if not page:
                break
            seen += page
            after = page[-1]
        assert seen == generated
        window = {
            "order": "asc",
            "limit": 1000,
            "start_date": (start + timedelta(milliseconds=100)).isoformat(),
            "end_date": (start + timedelta(milliseconds=200)).isoformat(),
        }
        assert ids(http.get("/v1/steps/", params=window)) == generated[11:20]
        trace = parse_trace_body(http.get(f"/v1/steps/{generated[0]}/trace").content)
        assert trace is not None
        assert trace.step_id == generated[0]
        metrics = parse_record(StepMetrics, http.get(f"/v1/steps/{generated[0]}/metrics").content)
        assert metrics.llm_request_ns
        assert len(store.run_ids()) == 1000


# ---------------------------------------------------------------------- faults and records
def test_faults_apply_in_order_and_expire(http, old):
    old.fail(429, times=2, retry_after=3, path=r"/trace$")
    old.fail(500, times=1)
    step = STEP_FILES[1].stem
    try:
        first = http.get(f"/v1/steps/{step}/trace")
        assert first.status_code == 429
        assert first.headers["retry-after"] == "3"
        assert http.get(f"/v1/steps/{step}/trace").status_code == 429
        assert http.get(f"/v1/steps/{step}").status_code == 500
        assert http.get(f"/v1/steps/{step}").status_code == 200
        assert http.get(f"/v1/steps/{step}/trace").status_code == 200
        old.malformed(path="/metrics")
        bad = http.get(f"/v1/steps/{step}/metrics")
        assert bad.status_code == 200
        with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
            bad.json()
        old.add_fault(Fault(status=503, times=None, path="/v1/agents/"))
        for _ in range(3):
            assert http.get("/v1/agents/agent-1").status_code == 503
    finally:
        old.clear_faults()
    assert http.get("/v1/agents/agent-1").status_code == 422


def test_dropped_connection_is_a_network_error(http, old):
    old.drop()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/v1/health/")
    finally:
        old.clear_faults()
    assert http.get("/v1/health/").status_code == 200


def test_held_traces_answer_null_until_released(http, old):
    step = STEP_FILES[1].stem
    old.hold_traces(step)
    assert http.get(f"/v1/steps/{step}/trace").content == b"null"
    old.release_traces(step)
    assert http.get(f"/v1/steps/{step}/trace").json()["step_id"] == step
    old.hold_traces()
    assert http.get(f"/v1/steps/{step}/trace").content == b"null"
    old.release_traces()
    assert http.get(f"/v1/steps/{step}/trace").json()["step_id"] == step


def test_api_key_is_required_when_set():
    with FakeLetta(api_key="k-123") as fake, httpx.Client(base_url=fake.url) as http:
        assert http.get("/v1/runs/").status_code == 401
        assert http.get("/v1/runs/", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get("/v1/runs/", headers={"Authorization": "Bearer k-123"}).status_code == 200
        assert http.get("/v1/health/").status_code == 200


def test_requests_are_recorded_with_headers_and_connection(http, old):
    old.clear_requests()
    for _ in range(3):
        http.get("/v1/runs/", params={"agent_ids": ["a", "b"], "limit": 2}, headers={"X-A": "1"})
    recorded = old.requests_to(r"^/v1/runs/$")
    assert len(recorded) == 3
    assert recorded[0].query["agent_ids"] == ("a", "b")
    assert recorded[0].param("limit") == "2"
    assert recorded[0].headers["x-a"] == "1"
    assert len({r.client_port for r in recorded}) == 1  # keep-alive: one connection


def test_server_stops_and_refuses_connections():
    fake = FakeLetta().start()
    url = fake.url
    with httpx.Client(base_url=url) as http:
        assert http.get("/v1/health/").status_code == 200
        fake.stop()
        with pytest.raises(httpx.TransportError):
            http.get("/v1/health/")
    with pytest.raises(RuntimeError):
        _ = fake.url


def test_store_takes_models_and_dicts():
    store = LettaStore()
    step = Step(id="step-22222222-2222-4222-8222-222222222222", run_id=None, agent_id=None)
    store.add_step(step, metrics={"id": step.id, "step_ns": 5})
    store.set_trace(step.id, {"request_json": {}, "response_json": {}, "step_id": step.id})
    store.add_run({"id": "run-33333333-3333-4333-8333-333333333333", "status": "running"})
    store.set_run_status("run-33333333-3333-4333-8333-333333333333", "completed")
    with FakeLetta(store, flavour="cloud") as fake, httpx.Client(base_url=fake.url) as http:
        assert ids(http.get("/v1/steps/")) == [step.id]
        assert http.get(f"/v1/steps/{step.id}/trace").json()["step_id"] == step.id
        run = http.get("/v1/runs/run-33333333-3333-4333-8333-333333333333").json()
        assert run["status"] == "completed"
