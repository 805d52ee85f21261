"""LettaClient against the fake Letta over real sockets: records, headers, errors, retries."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime

import httpx
import pytest

from exporter import __version__, wiring
from exporter._retry import parse_retry_after
from exporter.errors import (
    RecordInvalidError,
    SourceConnectionError,
    SourceError,
    SourceHTTPError,
    SourceResponseError,
)
from exporter.models import ProviderTrace
from exporter.settings import Settings
from exporter.source import LettaClient, RetryPolicy, StepFilter
from testkit import FakeLetta, Fault
from tests.conftest import LETTA

FAST = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.02)
STEP = "step-09622d5b-eac6-4ad5-af97-6ad55771b4b0"  # has a trace
NO_TRACE = "step-0926f9bd-777f-4b1a-a0f2-d59219f2b880"  # recorded 200 null
UNKNOWN_STEP = "step-00000000-0000-4000-8000-000000000000"
RUN = "run-36d2c5d1-ab84-4c5a-a84e-d75dab01bece"
AGENT = "agent-d027b87e-6c15-4e07-a892-d15d95d77843"
KEY = "sk-let-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def fake():
    with FakeLetta.from_fixtures(LETTA, flavour="0.16.8") as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.clear_faults()
    fake.release_traces()
    fake.clear_requests()
    fake.api_key = None
    yield
    fake.clear_faults()
    fake.api_key = None


def client_for(url: str, *, retry: RetryPolicy = FAST, **options) -> LettaClient:
    return LettaClient(httpx.AsyncClient(base_url=url, timeout=5.0), retry=retry, **options)


@pytest.fixture
async def client(fake):
    async with client_for(fake.url) as letta:
        yield letta


def settings_for(url: str, **values) -> Settings:
    values.setdefault("retry_backoff_initial_seconds", 0.01)
    values.setdefault("retry_backoff_max_seconds", 0.02)
    return Settings(letta_base_url=url, **values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- records
async def test_get_trace_parses_the_recorded_trace(client):
    trace = await client.get_trace(STEP)
    assert isinstance(trace, ProviderTrace)
    assert trace.step_id == STEP
    assert trace.created_at is not None


async def test_null_trace_is_none(client, fake):
    assert await client.get_trace(NO_TRACE) is None
    assert await client.get_trace(UNKNOWN_STEP) is None  # Letta answers 200 null, not 404
    fake.hold_traces(STEP)  # "written later"
    assert await client.get_trace(STEP) is None
    fake.release_traces(STEP)
    assert await client.get_trace(STEP) is not None


async def test_single_records(client):
    step = await client.get_step(STEP)
    assert step.id == STEP
    assert step.run_id
    metrics = await client.get_step_metrics(STEP)
    assert metrics is not None
    assert metrics.llm_request_ns
    run = await client.get_run(RUN)
    assert run.is_finished
    assert run.created_at is not None
    run_metrics = await client.get_run_metrics(RUN)
    assert run_metrics is not None
    assert run_metrics.run_ns == 552111104
    agent = await client.get_agent(AGENT)
    assert agent is not None
    assert agent.tags == ["team:support", "env:staging"]


async def test_missing_records(client, fake):
    assert await client.get_step_metrics(UNKNOWN_STEP) is None
    assert await client.get_run_metrics("run-00000000-0000-4000-8000-000000000000") is None
    assert await client.get_agent("agent-00000000-0000-4000-8000-000000000000") is None
    with pytest.raises(SourceHTTPError) as raised:
        await client.get_step(UNKNOWN_STEP)
    assert raised.value.status_code == 404
    assert raised.value.attempts == 1
    with pytest.raises(SourceHTTPError) as raised:
        await client.get_run("run-00000000-0000-4000-8000-000000000000")
    assert raised.value.status_code == 404


async def test_agents_are_cached_and_loaded_once(client, fake):
    agents = await asyncio.gather(*(client.get_agent(AGENT) for _ in range(5)))
    assert all(a is not None and a.id == AGENT for a in agents)
    missing = "agent-00000000-0000-4000-8000-000000000000"
    assert await client.get_agent(missing) is None
    assert await client.get_agent(missing) is None
    assert await client.get_agent(AGENT) is agents[0]
    assert len(fake.requests_to(rf"/v1/agents/{AGENT}")) == 1
    assert len(fake.requests_to(rf"/v1/agents/{missing}")) == 1


async def test_malformed_json_names_the_url(client, fake):
    # A trace body that is not JSON is that step's bad record (dead-lettered alone), not a
    # broken server: the error names the step.
    fake.malformed(path=r"/trace$")
    with pytest.raises(RecordInvalidError) as raised:
        await client.get_trace(STEP)
    assert raised.value.step_id == STEP
    assert f"step {STEP}" in str(raised.value)
    assert "not valid JSON" in str(raised.value)
    fake.malformed(path=r"^/v1/runs/$", body=b'{"not": "a list"}')
    with pytest.raises(SourceResponseError, match=r"/v1/runs/"):
        _ = [run async for run in client.list_runs(StepFilter())]


async def test_invalid_record_names_the_record_and_field(client, fake):
    fake.add_fault(
        Fault(
            status=200,
            path=r"/trace$",
            body=b'{"id": "provider_trace-12345678-aaaa", "request_json": "oops",'
            b' "response_json": {}}',
        )
    )
    with pytest.raises(RecordInvalidError) as raised:
        await client.get_trace(STEP)
    assert raised.value.record_id == "provider_trace-12345678-aaaa"
    assert raised.value.field == "request_json"


# ---------------------------------------------------------------------- headers and pool
async def test_from_settings_sends_auth_project_user_and_user_agent(fake):
    settings = settings_for(
        fake.url,
        letta_api_key=KEY,
        project_id="proj-1",
        letta_user_id="user-00000000-0000-4000-8000-000000000000",
        request_timeout_seconds=7.5,
        concurrency=3,
    )
    async with wiring.letta_client(settings) as letta:
        for _ in range(5):
            await letta.get_step(STEP)
        assert letta._http.timeout == httpx.Timeout(7.5)
    recorded = fake.requests_to(r"^/v1/steps/")
    assert len(recorded) == 5
    headers = recorded[0].headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["x-project-id"] == "proj-1"
    assert headers["user_id"] == "user-00000000-0000-4000-8000-000000000000"
    assert headers["user-agent"] == f"letta-otel-exporter/{__version__}"
    assert len({r.client_port for r in recorded}) == 1  # keep-alive: the connection is reused


async def test_no_key_no_authorization_header(fake):
    async with wiring.letta_client(settings_for(fake.url)) as letta:
        await letta.get_step(STEP)
    headers = fake.requests[0].headers
    assert "authorization" not in headers
    assert "x-project-id" not in headers
    assert "user_id" not in headers


async def test_concurrency_is_bounded(fake):
    fake.slow(0.05)
    async with client_for(fake.url, concurrency=3) as letta:
        traces = await asyncio.gather(*(letta.get_trace(STEP) for _ in range(12)))
        assert all(t is not None for t in traces)
        assert 2 <= letta.stats.max_in_flight <= 3
        assert letta.stats.requests == 12
    assert 2 <= fake.max_in_flight <= 3


# ---------------------------------------------------------------------- retries
async def test_429_with_retry_after_is_honoured(fake, caplog):
    fake.fail(429, times=1, retry_after="0.2", path=r"/trace$")
    caplog.set_level(logging.DEBUG, logger="exporter.source")
    # A fixed jitter draw of 0: the wait is exactly the server's Retry-After (its floor).
    exact = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.02, jitter=min)
    async with client_for(fake.url, retry=exact) as letta:
        assert await letta.get_trace(STEP) is not None
        assert letta.stats.retries == 1
        assert letta.stats.requests == 2
    # The server's Retry-After wins over the (tiny) computed backoff.
    assert any("retry 1 of 3 in 0.20s" in r.getMessage() for r in caplog.records)


async def test_5xx_then_success(client, fake):
    fake.fail(500, times=1)
    fake.fail(502, times=1)
    assert (await client.get_step(STEP)).id == STEP
    assert client.stats.retries == 2
    assert client.stats.failures == 0


async def test_dropped_connection_and_timeout_are_retried(fake):
    fake.drop(times=1)
    fake.add_fault(Fault(status=500, delay=1.0, times=1))  # answers after the client gave up
    async with LettaClient(httpx.AsyncClient(base_url=fake.url, timeout=0.2), retry=FAST) as letta:
        assert (await letta.get_step(STEP)).id == STEP
        assert letta.stats.retries == 2


async def test_retries_exhausted_names_url_and_status_never_the_key(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.fail(503, times=None, body=f'{{"detail": "overloaded, token {KEY}"}}'.encode())
    settings = settings_for(fake.url, letta_api_key=KEY, max_retries=2)
    async with wiring.letta_client(settings) as letta:
        with pytest.raises(SourceHTTPError) as raised:
            await letta.get_step(STEP)
        assert letta.stats.failures == 1
    error = raised.value
    assert error.status_code == 503
    assert error.attempts == 3
    assert f"{fake.url}/v1/steps/{STEP}" in str(error)
    assert "503" in str(error)
    assert "after 3 attempts" in str(error)
    assert len(fake.requests) == 3
    texts = [str(error), repr(error), str(error.detail), str(error.__cause__)]
    texts += [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert not [t for t in texts if KEY in t]
    assert "[secure]" in str(error)  # the server's echo of the key was blanked


async def test_no_retry_on_other_4xx(client, fake):
    with pytest.raises(SourceHTTPError) as raised:
        await client.get_step("not-a-step-id")
    assert raised.value.status_code == 422
    with pytest.raises(SourceHTTPError) as raised:
        await client.get_step(UNKNOWN_STEP)
    assert raised.value.status_code == 404
    assert len(fake.requests) == 2
    assert client.stats.retries == 0


async def test_connection_refused(caplog):
    url = f"http://127.0.0.1:{free_port()}"
    async with client_for(url, retry=RetryPolicy(max_retries=2, initial_backoff=0.01)) as letta:
        with pytest.raises(SourceConnectionError) as raised:
            await letta.get_trace(STEP)
        assert letta.stats.requests == 3
    assert raised.value.attempts == 3
    assert f"{url}/v1/steps/{STEP}/trace" in str(raised.value)
    assert "ConnectError" in str(raised.value)


async def test_stop_interrupts_the_backoff(fake):
    fake.fail(503, times=None, retry_after=120)
    stop = asyncio.Event()
    async with client_for(fake.url, retry=RetryPolicy(max_retries=5), stop=stop) as letta:
        task = asyncio.create_task(letta.get_step(STEP))
        for _ in range(1000):  # until the first answer came and the client is backing off
            if letta.stats.retries:
                break
            await asyncio.sleep(0.01)
        stop.set()
        with pytest.raises(SourceHTTPError) as raised:
            await asyncio.wait_for(task, timeout=10)
    assert raised.value.status_code == 503
    assert len(fake.requests) == 1


def test_retry_after_parsing():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("0.5", now=now) == 0.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


def test_backoff_full_jitter_and_caps():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0)
    for retry in range(8):
        assert 0.0 <= policy.backoff(retry) <= min(4.0, 2.0**retry)
    # Retry-After is a floor; the jitter draw is added on top of it (a fixed draw here).
    no_jitter = RetryPolicy(initial_backoff=1.0, max_backoff=4.0, jitter=min)
    assert no_jitter.backoff(0, retry_after=2.5) == 2.5
    assert no_jitter.backoff(0, retry_after=100.0) == 100.0  # beyond max_backoff: still honoured
    assert no_jitter.backoff(0, retry_after=10_000.0) == 300.0  # up to five minutes
    top = RetryPolicy(max_backoff=600, jitter=min)
    assert top.backoff(0, retry_after=10_000.0) == 600.0
    for retry in range(8):
        wait = policy.backoff(retry, retry_after=2.5)
        assert 2.5 <= wait <= 2.5 + min(4.0, 2.0**retry)  # never before the server allows
    highest = RetryPolicy(initial_backoff=1.0, max_backoff=4.0, jitter=max)
    assert highest.backoff(3, retry_after=2.5) == 6.5


def test_retry_after_date_without_zone_is_utc():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 -0000", now=now) == 30.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("   ") is None
    assert parse_retry_after("Thu, 99 Foo 2026") is None


# ---------------------------------------------------------------------- check
async def test_check_reports_version_and_discovery(fake):
    async with client_for(fake.url) as letta:
        line = await letta.check()
    assert "0.16.8" in line
    assert fake.url in line
    assert "runs" in line
    assert "400" in line
    assert "\n" not in line
    with FakeLetta.from_fixtures(LETTA, flavour="cloud") as cloud:
        async with client_for(cloud.url) as letta:
            assert "discovery: steps" in await letta.check()


async def test_check_says_the_api_key_was_refused(fake):
    fake.api_key = "the-right-key"
    settings = settings_for(fake.url, letta_api_key=KEY)
    async with wiring.letta_client(settings) as letta:
        with pytest.raises(SourceHTTPError) as raised:
            await letta.check()
    assert raised.value.status_code == 401
    assert "API key was refused" in str(raised.value)
    assert KEY not in str(raised.value)
    async with wiring.letta_client(settings_for(fake.url)) as letta:
        with pytest.raises(SourceHTTPError, match="wants an API key"):
            await letta.check()
    right = settings_for(fake.url, letta_api_key="the-right-key", discovery="runs")
    async with wiring.letta_client(right) as letta:
        assert "runs (set by the discovery setting)" in await letta.check()


async def test_check_cannot_reach():
    async with client_for(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(0)) as letta:
        with pytest.raises(SourceConnectionError, match="could not reach Letta"):
            await letta.check()


async def test_bad_resume_position_is_a_source_error(client):
    with pytest.raises(SourceError, match="cannot resume"):
        _ = [s async for s in client.discover(StepFilter(), resume="run-1/step-2/bad-time")]


async def test_a_cancelled_agent_load_does_not_fail_the_others(client, fake):
    fake.slow(0.2, path=r"^/v1/agents/")
    first = asyncio.create_task(client.get_agent(AGENT))
    for _ in range(1000):  # bounded: until the load is on its way to Letta
        if fake.requests_to(r"^/v1/agents/"):
            break
        await asyncio.sleep(0.005)
    second = asyncio.create_task(client.get_agent(AGENT))
    for _ in range(3):
        await asyncio.sleep(0)  # the second caller joins the load under way
    first.cancel()
    agent = await asyncio.wait_for(second, timeout=10)
    assert agent is not None
    assert agent.id == AGENT
    assert first.cancelled()
    assert len(fake.requests_to(r"^/v1/agents/")) == 1  # one request served both
