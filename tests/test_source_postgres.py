"""The PostgreSQL source against a real server holding the recorded Letta 0.16.8 database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.convert import TraceContext, build_resource, convert_trace
from exporter.errors import DatabaseConfigError, DatabaseError
from exporter.models import ProviderTrace, Step, StepMetrics
from exporter.source._contract import CaughtUp, Found, Unreadable
from exporter.source._postgres import PostgresOptions, PostgresSource

from .conftest import LETTA
from .pg_support import letta_database, server_dsn, with_dbname

pytestmark = pytest.mark.e2e

RESOURCE = build_resource("letta")
#: Span attributes the database path sets and the API path cannot: the step's created_at,
#: which the API hides. Nothing else may differ.
DATABASE_ONLY = frozenset({"letta.step.created_at"})


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with letta_database() as url:
        yield url


async def read_all(options: PostgresOptions, *, resume: str | None = None) -> list:
    source = PostgresSource(options)
    try:
        return [event async for event in source.read(resume=resume, follow=False)]
    finally:
        await source.aclose()


def found(events: list) -> list[Found]:
    return [e for e in events if isinstance(e, Found)]


def api_views() -> dict[str, dict]:
    """Every step the API answered for, with its trace and metrics (from the recordings)."""
    views: dict[str, dict] = {}
    for path in sorted((LETTA / "steps").glob("*.json")):
        view = json.loads(path.read_text())
        views[view["step"]["id"]] = view
    views.update(json.loads((LETTA / "socket" / "api_view.json").read_text()))
    return views


def span_dict(span) -> dict:
    return {
        "trace_id": span.context.trace_id,
        "span_id": span.context.span_id,
        "parent": span.parent.span_id if span.parent else None,
        "name": span.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": (span.status.status_code, span.status.description),
        "attributes": dict(span.attributes or {}),
    }


async def test_every_row_once_in_key_order(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        expected = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM provider_traces WHERE NOT is_deleted ORDER BY created_at, id"
            )
        ]
    events = await read_all(PostgresOptions(dsn=dsn, key_page=7, batch=3))
    assert [e.trace.id for e in found(events)] == expected
    assert len(expected) == 53
    assert isinstance(events[-1], CaughtUp)
    assert all(e.origin == "postgres" for e in found(events))


async def test_same_spans_as_the_api_for_the_same_trace(dsn: str) -> None:
    views = {v["trace"]["id"]: v for v in api_views().values() if v.get("trace")}
    by_id = {e.trace.id: e for e in found(await read_all(PostgresOptions(dsn=dsn)))}
    common = sorted(set(views) & set(by_id))
    assert len(common) == 7, common  # the socket recordings with a step the API answered for
    for trace_id in common:
        view, event = views[trace_id], by_id[trace_id]
        api_span = convert_trace(
            ProviderTrace.model_validate(view["trace"]),
            TraceContext(
                step=Step.model_validate(view["step"]),
                metrics=StepMetrics.model_validate(view["metrics"]) if view["metrics"] else None,
            ),
            resource=RESOURCE,
        )
        db_span = convert_trace(
            event.trace, TraceContext(step=event.step, metrics=event.metrics), resource=RESOURCE
        )
        api, db = span_dict(api_span), span_dict(db_span)
        db_attrs, api_attrs = db.pop("attributes"), api.pop("attributes")
        assert db == api, trace_id
        assert set(db_attrs) - set(api_attrs) <= DATABASE_ONLY, trace_id
        assert {k: v for k, v in db_attrs.items() if k not in DATABASE_ONLY} == api_attrs, trace_id


async def test_the_database_has_the_rows_the_api_cannot_return(dsn: str) -> None:
    events = found(await read_all(PostgresOptions(dsn=dsn)))
    kinds = {e.trace.call_type for e in events}
    assert "summarization" in kinds
    orphans = [e for e in events if e.trace.step_id is None and e.trace.run_id is None]
    assert orphans, "the summarize endpoint's rows (step and run null)"
    for event in orphans:
        assert event.step is None
        assert event.run is None
        span = convert_trace(event.trace, TraceContext(agent=event.agent), resource=RESOURCE)
        assert span.context.span_id
    step_ids = [e.trace.step_id for e in events if e.trace.step_id]
    assert len(step_ids) > len(set(step_ids)), "compacted steps hold two traces"


async def test_context_is_joined(dsn: str) -> None:
    events = found(await read_all(PostgresOptions(dsn=dsn)))
    with_step = [e for e in events if e.trace.step_id]
    assert all(e.step is not None and e.step.id == e.trace.step_id for e in with_step)
    assert all(e.step.created_at is not None for e in with_step if e.step)
    assert all(e.run is not None for e in events if e.trace.run_id)
    assert all(e.agent is not None and e.agent.name for e in events if e.trace.agent_id)
    assert {e.step.status for e in with_step if e.step} <= {
        "success",
        "failed",
        "pending",
        "cancelled",
    }


async def test_resume_from_any_position_continues_right_after(dsn: str) -> None:
    everything = [e.trace.id for e in found(await read_all(PostgresOptions(dsn=dsn)))]
    head = await read_all(PostgresOptions(dsn=dsn, limit=20))
    first = found(head)
    assert [e.trace.id for e in first] == everything[:20]
    assert isinstance(head[-1], CaughtUp)
    assert head[-1].position == first[-1].position  # a limit never saves a position past it
    rest = found(await read_all(PostgresOptions(dsn=dsn), resume=first[-1].position))
    assert [e.trace.id for e in rest] == everything[20:]
    positions = [e.position for e in found(await read_all(PostgresOptions(dsn=dsn, batch=4)))]
    for cut in (0, 7, 33, 52):  # resuming from any event's position
        tail = found(await read_all(PostgresOptions(dsn=dsn, batch=5), resume=positions[cut]))
        assert [e.trace.id for e in tail] == everything[cut + 1 :]


async def test_filters_window_agents_and_limit(dsn: str) -> None:
    events = found(await read_all(PostgresOptions(dsn=dsn)))
    times = sorted(e.trace.created_at for e in events)
    since, until = times[10], times[30]
    window = found(await read_all(PostgresOptions(dsn=dsn, since=since, until=until)))
    assert [e.trace.id for e in window] == [
        e.trace.id for e in events if since <= e.trace.created_at < until
    ]
    agent = events[0].trace.agent_id
    mine = found(await read_all(PostgresOptions(dsn=dsn, agent_ids=(agent,))))
    assert mine
    assert all(e.trace.agent_id == agent for e in mine)
    assert len(mine) == sum(e.trace.agent_id == agent for e in events)
    assert len(found(await read_all(PostgresOptions(dsn=dsn, limit=5)))) == 5


async def test_shards_split_the_rows_exactly(dsn: str) -> None:
    everything = {e.trace.id for e in found(await read_all(PostgresOptions(dsn=dsn)))}
    parts = [
        {e.trace.id for e in found(await read_all(PostgresOptions(dsn=dsn, shard=(i, 3))))}
        for i in range(3)
    ]
    assert set().union(*parts) == everything
    assert sum(len(p) for p in parts) == len(everything)
    assert all(parts)


async def test_a_runs_traces_stay_in_one_shard(dsn: str) -> None:
    runs: list[set[str]] = []
    for i in range(3):
        events = found(await read_all(PostgresOptions(dsn=dsn, shard=(i, 3))))
        runs.append({e.trace.run_id for e in events if e.trace.run_id})
    assert sum(len(r) for r in runs) == len(set().union(*runs))  # no run in two shards
    assert sum(1 for r in runs if r) >= 2


async def test_the_session_is_read_only(dsn: str) -> None:
    source = PostgresSource(PostgresOptions(dsn=dsn, statement_timeout=7))
    try:
        conn, _ = await source._connect()
        row = await (await conn.execute("SHOW transaction_read_only")).fetchone()
        assert row == ("on",)
        row = await (await conn.execute("SHOW statement_timeout")).fetchone()
        assert row == ("7s",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await conn.execute("UPDATE provider_traces SET source = 'x'")
    finally:
        await source.aclose()


def test_queries_take_no_locks() -> None:
    from exporter.source._pg_schema import OPTIONAL, REQUIRED, Filters, Queries, Schema

    schema = Schema(
        {t: frozenset(REQUIRED.get(t, ()) + OPTIONAL.get(t, ())) for t in {*REQUIRED, *OPTIONAL}}
    )
    q = Queries(schema)
    texts = [
        q.rows,
        q.metadata_rows,
        q.runs,
        q.agents,
        q.keys(Filters(True, True, True, True, True)),
    ]
    for text in texts:
        rendered = text.as_string(None).upper()
        assert rendered.startswith("SELECT")
        assert " FOR UPDATE" not in rendered
        assert " FOR SHARE" not in rendered


# --- database of its own, modified: soft deletes, bad bodies, metadata-only, late commits ----
@pytest.fixture
def writable(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


async def test_soft_deleted_rows_are_skipped(dsn: str, writable: psycopg.Connection) -> None:
    victim = writable.execute(
        "SELECT id FROM provider_traces ORDER BY created_at LIMIT 1"
    ).fetchone()[0]
    writable.execute("UPDATE provider_traces SET is_deleted = true WHERE id = %s", (victim,))
    try:
        ids = [e.trace.id for e in found(await read_all(PostgresOptions(dsn=dsn)))]
        assert victim not in ids
        assert len(ids) == 52
    finally:
        writable.execute("UPDATE provider_traces SET is_deleted = false WHERE id = %s", (victim,))


async def test_a_body_that_is_not_an_object_is_unreadable_and_the_rest_go_on(
    dsn: str, writable: psycopg.Connection
) -> None:
    victim, body = writable.execute(
        "SELECT id, response_json::text FROM provider_traces ORDER BY created_at LIMIT 1 OFFSET 3"
    ).fetchone()
    writable.execute("UPDATE provider_traces SET response_json = '[1, 2]' WHERE id = %s", (victim,))
    try:
        events = await read_all(PostgresOptions(dsn=dsn))
        bad = [e for e in events if isinstance(e, Unreadable)]
        assert len(bad) == 1
        assert bad[0].record_id == victim
        assert "response_json" in bad[0].detail
        assert bad[0].position
        assert len(found(events)) == 52
    finally:
        writable.execute(
            "UPDATE provider_traces SET response_json = %s::json WHERE id = %s", (body, victim)
        )


async def test_metadata_only_rows_become_traces_without_bodies(
    dsn: str, writable: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    writable.execute(
        "INSERT INTO provider_trace_metadata (created_at, id, step_id, agent_id, agent_tags,"
        " call_type, run_id, organization_id) SELECT now(), 'provider_trace-' || gen_random_uuid(),"
        " NULL, agent_id, '[]', 'summarization', NULL, organization_id FROM provider_traces LIMIT 2"
    )
    try:
        events = found(await read_all(PostgresOptions(dsn=dsn)))
        empty = [e for e in events if not e.trace.request_json]
        assert len(empty) == 2
        assert all(e.trace.response_json == {} for e in empty)
        assert len(events) == 55
        said = [r for r in caplog.records if "metadata only" in r.getMessage()]
        assert len(said) == 1
        assert all(convert_trace(e.trace, resource=RESOURCE).name for e in empty)
    finally:
        writable.execute("DELETE FROM provider_trace_metadata")


async def test_a_row_committed_late_with_an_earlier_created_at_is_not_skipped(
    dsn: str, writable: psycopg.Connection
) -> None:
    def insert(conn: psycopg.Connection, created_at: str) -> str:
        return conn.execute(
            "INSERT INTO provider_traces (id, request_json, response_json, agent_id, call_type,"
            " created_at, organization_id) SELECT 'provider_trace-' || gen_random_uuid(),"
            " request_json, response_json, agent_id, 'summarization', " + created_at + ","
            " organization_id FROM provider_traces ORDER BY created_at LIMIT 1 RETURNING id"
        ).fetchone()[0]

    base = found(await read_all(PostgresOptions(dsn=dsn)))
    source = PostgresSource(PostgresOptions(dsn=dsn, overlap=60))
    try:
        with psycopg.connect(dsn) as late:  # a transaction of its own, committed later
            late_id = insert(late, "now() - interval '2 seconds'")  # created_at: its start
            early_id = insert(writable, "now()")  # committed at once, newer created_at
            first = found([e async for e in source.read(resume=base[-1].position, follow=False)])
            assert [e.trace.id for e in first] == [early_id]  # the reader passed late_id's time
            late.commit()
        second = found([e async for e in source.read(resume=first[-1].position, follow=False)])
        assert [e.trace.id for e in second] == [late_id]
        third = found([e async for e in source.read(resume=second[-1].position, follow=False)])
        assert third == []  # the overlap window's ids are not read twice
    finally:
        await source.aclose()
        writable.execute(
            "DELETE FROM provider_traces WHERE NOT (id = ANY(%s))", ([e.trace.id for e in base],)
        )


async def test_follow_polls_for_new_rows(dsn: str, writable: psycopg.Connection) -> None:
    base = found(await read_all(PostgresOptions(dsn=dsn)))
    source = PostgresSource(PostgresOptions(dsn=dsn, poll_interval=0.05))
    seen: list[str] = []
    try:
        caught_up = 0
        async for event in source.read(resume=base[-1].position, follow=True):
            if isinstance(event, CaughtUp):
                caught_up += 1
                if caught_up == 1:
                    writable.execute(
                        "INSERT INTO provider_traces (id, request_json, response_json, created_at,"
                        " organization_id) SELECT 'provider_trace-' || gen_random_uuid(),"
                        " '{}', '{}', now(), id FROM organizations LIMIT 1"
                    )
                elif seen or caught_up > 200:
                    break
            elif isinstance(event, Found):
                seen.append(event.trace.id)
        assert len(seen) == 1
    finally:
        await source.aclose()
        writable.execute(
            "DELETE FROM provider_traces WHERE NOT (id = ANY(%s))", ([e.trace.id for e in base],)
        )


# --- errors: one clear line, never the password --------------------------------------------
async def test_wrong_password_is_a_configuration_error_without_the_password(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    url = f"postgresql://{params['user']}:hunter2-secret@{params['host']}:{params['port']}/{params['dbname']}"
    with pytest.raises(DatabaseConfigError) as info:
        await read_all(PostgresOptions(dsn=url))
    text = str(info.value)
    assert "authentication refused" in text
    assert "hunter2" not in text
    assert ":***@" in text
    assert info.value.configuration


async def test_unreachable_port_is_a_run_time_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://someone:topsecret@127.0.0.1:{port}/letta"
    with pytest.raises(DatabaseError) as info:
        await read_all(PostgresOptions(dsn=url, connect_timeout=2))
    assert not isinstance(info.value, DatabaseConfigError)
    assert "cannot connect" in str(info.value)
    assert "topsecret" not in str(info.value)


async def test_missing_database_table_and_column_are_named() -> None:
    admin = server_dsn()
    with pytest.raises(DatabaseConfigError, match="does not exist"):
        await read_all(PostgresOptions(dsn=with_dbname(admin, "no_such_db_for_letta")))
    from .pg_support import scratch_database

    with scratch_database() as empty:
        with pytest.raises(DatabaseConfigError, match="missing table provider_traces"):
            await read_all(PostgresOptions(dsn=empty))
        with psycopg.connect(empty, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE provider_traces (id varchar, request_json json, response_json json,"
                " step_id varchar, agent_id varchar, run_id varchar, created_at timestamptz,"
                " is_deleted boolean)"
            )
        with pytest.raises(DatabaseConfigError, match=r"column provider_traces\.call_type"):
            await read_all(PostgresOptions(dsn=empty))


async def test_check_reports_counts_and_the_missing_index(dsn: str) -> None:
    source = PostgresSource(PostgresOptions(dsn=dsn))
    try:
        report = await source.check()
    finally:
        await source.aclose()
    assert report.traces == 53
    assert report.index is None
    text = "\n".join(report.lines())
    assert "CREATE INDEX CONCURRENTLY" in text
    assert "(created_at, id)" in text
    assert "password=***" in text or ":***@" in text
    assert "password=letta_exporter_test" not in text


def test_positions_are_short_for_old_rows() -> None:
    from exporter.source._pg_position import Cursor

    cursor = Cursor()
    now = datetime.fromisoformat("2026-12-01T12:00:00+00:00")
    for i in range(1000):
        cursor.advance(now - timedelta(days=1, seconds=i), f"provider_trace-{i:08d}", now)
    assert len(cursor.encode()) < 120
    cursor.advance(now, "provider_trace-new", now - timedelta(seconds=30))
    assert Cursor.decode(cursor.encode()).recent == {"provider_trace-new": now}


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://letta:s3cret@db:5432/letta", "postgresql://letta:***@db:5432/letta"),
        ("postgresql+asyncpg://letta:s3cret@db/letta", "postgresql://letta:***@db/letta"),
        ("postgres://db/letta?user=x&password=s3cret", "postgres://db/letta?user=x&password=***"),
        (
            "host=db user=letta password=s3cret dbname=letta",
            "host=db user=letta password=*** dbname=letta",
        ),
        ("postgresql://letta@db/letta", "postgresql://letta@db/letta"),
    ],
)
def test_dsns_are_masked(dsn: str, masked: str) -> None:
    from exporter.source._pg_dsn import mask_dsn

    assert mask_dsn(dsn) == masked
    assert "s3cret" not in mask_dsn(dsn)


async def test_an_sqlalchemy_url_like_letta_pg_uri_connects(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    url = (
        f"postgresql+asyncpg://{params['user']}:{params['password']}@{params['host']}:"
        f"{params['port']}/{params['dbname']}"
    )
    assert len(found(await read_all(PostgresOptions(dsn=url, limit=3)))) == 3


async def test_tool_generation_rows_are_read_like_the_others(
    dsn: str, writable: psycopg.Connection
) -> None:
    base = found(await read_all(PostgresOptions(dsn=dsn)))
    new_id = writable.execute(
        "INSERT INTO provider_traces (id, request_json, response_json, step_id, agent_id,"
        " call_type, run_id, created_at, organization_id) SELECT"
        " 'provider_trace-' || gen_random_uuid(), request_json, response_json, NULL, agent_id,"
        " 'tool_generation', NULL, now(), organization_id FROM provider_traces"
        " ORDER BY created_at LIMIT 1 RETURNING id"
    ).fetchone()[0]
    try:
        events = found(await read_all(PostgresOptions(dsn=dsn), resume=base[-1].position))
        assert [(e.trace.id, e.trace.call_type) for e in events] == [(new_id, "tool_generation")]
        span = convert_trace(
            events[0].trace, TraceContext(agent=events[0].agent), resource=RESOURCE
        )
        assert span.attributes["letta.call_type"] == "tool_generation"
    finally:
        writable.execute("DELETE FROM provider_traces WHERE id = %s", (new_id,))


async def test_a_query_past_the_statement_timeout_is_a_run_time_error(dsn: str) -> None:
    with psycopg.connect(dsn) as locker:  # holds the table until the reader gives up
        locker.execute("LOCK TABLE provider_traces IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseError) as info:
            await read_all(PostgresOptions(dsn=dsn, statement_timeout=0.2))
        locker.rollback()
    assert not info.value.configuration
    assert "statement_timeout" in str(info.value)
    assert "CREATE INDEX CONCURRENTLY" in str(info.value)


async def test_rows_become_records_one_event_at_a_time(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch's rows are parsed as its events are taken, so one trace's 20 KB bodies are alive
    # at a time (not a batch's, which the garbage collector would walk again and again).
    from exporter.source import _postgres

    parsed: list[str] = []
    real = _postgres.trace_from_row

    def counting(row, *, bodies=True):  # type: ignore[no-untyped-def]
        parsed.append(row[0])
        return real(row, bodies=bodies)

    monkeypatch.setattr(_postgres, "trace_from_row", counting)
    source = PostgresSource(PostgresOptions(dsn=dsn, batch=50))
    taken: list[str] = []
    try:
        async for event in source.read(resume=None, follow=False):
            if isinstance(event, Found):
                taken.append(event.trace.id)
                assert parsed == taken  # nothing parsed ahead of the events taken
    finally:
        await source.aclose()
    assert len(taken) == 53


async def test_the_next_batch_is_read_while_this_one_is_taken(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database works on the next batch while this one is converted: its queries go out
    # before this batch's last event is taken, and the events are the same, in the same order.
    from exporter.source._pg_reader import PgReader

    everything = [e.trace.id for e in found(await read_all(PostgresOptions(dsn=dsn)))]
    taken: list[str] = []
    started_at: list[int] = []
    real = PgReader._read_rows

    async def recording(self, conn, queries, keys):  # type: ignore[no-untyped-def]
        started_at.append(len(taken))
        return await real(self, conn, queries, keys)

    monkeypatch.setattr(PgReader, "_read_rows", recording)
    source = PostgresSource(PostgresOptions(dsn=dsn, batch=40))
    try:
        async for event in source.read(resume=None, follow=False):
            if isinstance(event, Found):
                taken.append(event.trace.id)
    finally:
        await source.aclose()
    assert taken == everything
    assert len(started_at) == 2
    assert started_at[1] < 40  # the second batch was asked for while the first was taken


async def test_stopping_mid_batch_ends_the_read_ahead(dsn: str) -> None:
    # A consumer that stops with the next batch in flight leaves no query running and no
    # stray task error; the same source reads again from the start.
    import asyncio

    loop = asyncio.get_running_loop()
    troubles: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: troubles.append(context))
    source = PostgresSource(PostgresOptions(dsn=dsn, batch=40))
    try:
        events = source.read(resume=None, follow=False)
        taken = 0
        async for event in events:
            taken += isinstance(event, Found)
            if taken == 35:  # past the turn that sent the next batch's queries
                break
        await events.aclose()
        again = found([e async for e in source.read(resume=None, follow=False)])
    finally:
        await source.aclose()
        loop.set_exception_handler(None)
    assert len(again) == 53
    assert troubles == []


async def test_a_batch_keeps_its_agents_when_the_next_read_empties_the_cache(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.source import _pg_reader

    monkeypatch.setattr(_pg_reader, "_AGENT_CACHE_MAX", 1)  # every batch's load empties it
    events = found(await read_all(PostgresOptions(dsn=dsn, batch=40)))
    with_agent = [e for e in events if e.trace.agent_id]
    assert with_agent
    assert all(e.agent is not None and e.agent.id == e.trace.agent_id for e in with_agent)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.characters(max_codepoint=127)),  # quotes, backslashes, controls
        st.from_regex(r"provider_trace-[0-9a-f-]{36}", fullmatch=True),
    )
)
def test_positions_write_ids_as_json_does(record_id: str) -> None:
    from exporter.source._pg_position import Cursor

    position = Cursor(id=record_id).encode()
    assert json.loads(position)["i"] == record_id
    assert position.endswith(f'"i":{json.dumps(record_id)}}}')
