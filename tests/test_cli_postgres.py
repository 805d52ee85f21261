"""``export --source postgres`` and ``run --source postgres`` end to end: the CLI in a subprocess
over a real PostgreSQL holding the recorded dump, a real OTLP receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.convert import span_id_for
from testkit.otlp_receiver import OtlpReceiver

from .pg_support import letta_database

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exporter.cli"]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with letta_database() as url:
        yield url


def _rows(dsn: str) -> list[tuple[str, str | None, str | None]]:
    with psycopg.connect(dsn) as conn:
        return [
            (str(r[0]), r[1], r[2])
            for r in conn.execute(
                "SELECT id, step_id, run_id FROM provider_traces WHERE NOT is_deleted"
            ).fetchall()
        ]


def _env(tmp: Path, receiver: OtlpReceiver, dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
    env.update(
        LETTA_EXPORTER_STATE_PATH=str(tmp / "state.json"),
        LETTA_EXPORTER_DEAD_LETTER_PATH=str(tmp / "dead.jsonl"),
        LETTA_EXPORTER_RETRY_BACKOFF_INITIAL_SECONDS="0.01",
        LETTA_EXPORTER_RETRY_BACKOFF_MAX_SECONDS="0.2",
        LETTA_EXPORTER_DATABASE_URL=dsn,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        PYTHONUNBUFFERED="1",
        LETTA_EXPORTER_HEALTH_PORT="0",  # a free port: never the default another process holds
    )
    env.update(extra)
    return env


def _export(env: dict[str, str], *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [*CLI, "export", "--source", "postgres", "--json", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {}
    return proc.returncode, report, proc.stderr


def _wait(predicate: Callable[[], bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The CLI in the background, its output piped."""
    return subprocess.Popen(
        [*CLI, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _llm(receiver: OtlpReceiver, wanted: set[str]) -> set[str]:
    return {sid for _, sid in receiver.span_ids() if sid in wanted}


def test_export_delivers_every_row_and_a_second_run_nothing_new(dsn, tmp_path):
    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    assert len(rows) == 53
    assert any(step is None and run is None for _, step, run in rows)  # summarizations
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn)
        code, report, err = _export(env)
        assert code == 0, err
        assert report["exported"] == 53
        assert report["ok"] is True
        assert _llm(rx, expected) == expected
        first = rx.span_count
        runs_first = report["run_spans"]
        assert runs_first > 0

        code, report, err = _export(env)
        assert code == 0, err
        assert report["exported"] == 0
        assert rx.span_count == first  # nothing new, nothing twice
        assert "nothing new" in err
    assert rx.duplicate_count == 0


def test_dry_run_limit_and_agents(dsn, tmp_path):
    with psycopg.connect(dsn) as conn:
        agent, count = conn.execute(
            "SELECT agent_id, count(*) FROM provider_traces WHERE agent_id IS NOT NULL "
            "AND NOT is_deleted GROUP BY agent_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn)
        code, report, err = _export(env, "--dry-run")
        assert code == 0, err
        assert report["exported"] == 53
        assert report["sink"] == "dry-run"
        assert rx.span_count == 0
        assert not (tmp_path / "state.json").exists()  # a dry run moves no cursor

        code, report, err = _export(env, "--limit", "5")
        assert code == 0, err
        assert report["exported"] == 5

        code, report, err = _export(env, "--agent-id", agent)
        assert code == 0, err
        assert report["exported"] == count


def test_two_workers_split_the_rows_and_add_up(dsn, tmp_path):
    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    with OtlpReceiver() as one:
        code, report, err = _export(_env(tmp_path / "one", one, dsn))
        assert code == 0, err
        run_spans = {ids for ids in one.span_ids() if ids[1] not in expected}
        assert run_spans
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn)
        code, report, err = _export(env, "--workers", "2")
        assert code == 0, err
        assert report["exported"] == 53
        llm = [s.span_id for s in rx.spans() if s.span_id in expected]
        assert sorted(llm) == sorted(expected)  # every trace once
        # Every run keeps its parent span, though a shard may see none of the run's traces.
        assert {ids for ids in rx.span_ids() if ids[1] not in expected} == run_spans


def test_configuration_errors_exit_2_and_run_time_errors_exit_1(dsn, tmp_path):
    wrong = dsn.replace("password=letta_exporter_test", "password=WRONGSECRET")
    if wrong == dsn:
        wrong = dsn.replace(":letta_exporter_test@", ":WRONGSECRET@")
    with OtlpReceiver() as rx:
        code, report, err = _export(_env(tmp_path, rx, wrong))
        assert code == 2, err
        assert "WRONGSECRET" not in err + json.dumps(report)
        assert report["ok"] is False

        down = "postgresql://nobody:WRONGSECRET@127.0.0.1:1/letta"
        code, report, err = _export(_env(tmp_path, rx, down))
        assert code == 1, err
        assert report["error"]
        assert "WRONGSECRET" not in err + json.dumps(report)
        assert "Traceback" not in err


def test_kill_9_in_the_middle_then_restart_loses_nothing(dsn, tmp_path):
    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn, LETTA_EXPORTER_BATCH_SIZE="5")
        rx.set_delay(0.2)
        proc = _start(env, "export", "--source", "postgres", "--json")
        assert _wait(lambda: len(_llm(rx, expected)) >= 10)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert rx.wait_idle(10)
        before = _llm(rx, expected)
        assert len(before) < len(expected)

        rx.set_delay(0)
        code, _, err = _export(env)
        assert code == 0, err
        assert _llm(rx, expected) == expected
        # At least once: only the batch in flight at the kill comes again, same ids.
        assert rx.duplicate_count <= 5


@pytest.mark.parametrize("command", ["export", "run"])
def test_sigterm_mid_backlog_stops_after_the_batch_in_hand_and_the_next_run_resumes(
    dsn, tmp_path, command
):
    # A backlog is not finished first: the batch in hand is delivered, the checkpoint saved,
    # and the process ends with the rest left for the next run, which loses and repeats none.
    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn, LETTA_EXPORTER_BATCH_SIZE="5")
        rx.set_delay(0.3)  # 11 requests: a few seconds for the whole table
        args = ["--source", "postgres"] + (["--json"] if command == "export" else [])
        proc = _start(env, command, *args)
        assert _wait(lambda: len(_llm(rx, expected)) >= 5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "did not finish within" not in err  # it ended on its own, not by the timeout
        assert rx.wait_idle(10)
        first = _llm(rx, expected)
        assert 5 <= len(first) < len(expected)
        if command == "export":
            report = json.loads(out)
            assert report["interrupted"] is True
            assert report["exported"] == len(first)
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["streams"]  # the delivered part is checkpointed

        rx.set_delay(0)
        if command == "export":
            code, report, err = _export(env)
            assert code == 0, err
            assert report["exported"] == len(expected) - len(first)
        else:  # the sidecar's own stream: the next start resumes it
            proc = _start(env, command, *args)
            try:
                assert _wait(lambda: _llm(rx, expected) == expected)
            finally:
                proc.send_signal(signal.SIGTERM)  # caught up: it waits for new rows
                _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "did not finish within" not in err  # the wait ended on the signal
        assert _llm(rx, expected) == expected
        assert rx.duplicate_count == 0


def test_run_follows_the_table_for_new_rows(dsn, tmp_path):
    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    with OtlpReceiver() as rx:
        env = _env(tmp_path, rx, dsn, LETTA_EXPORTER_DATABASE_POLL_SECONDS="0.2")
        proc = subprocess.Popen(
            [*CLI, "run", "--source", "postgres"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        new_id = "provider_trace-00000000-0000-4000-8000-0000000000aa"
        try:
            assert _wait(lambda: _llm(rx, expected) == expected)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO provider_traces (id, request_json, response_json, created_at,"
                    " is_deleted, organization_id) SELECT %s, request_json, response_json, now(),"
                    " false, organization_id FROM provider_traces LIMIT 1",
                    (new_id,),
                )
            new_span = f"{span_id_for(new_id):016x}"
            assert _wait(lambda: new_span in _llm(rx, {new_span}))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM provider_traces WHERE id = %s", (new_id,))
        assert proc.returncode == 0, err
        assert rx.duplicate_count == 0


def test_mixing_the_socket_and_the_database_never_makes_two_spans_of_one_trace(dsn, tmp_path):
    from . import test_sidecar_socket as sock

    rows = _rows(dsn)
    expected = {f"{span_id_for(row_id):016x}" for row_id, _, _ in rows}
    short = Path(sock.tempfile.mkdtemp(prefix="lsx", dir="/tmp"))
    try:
        with OtlpReceiver() as rx:
            port = sock._free_port()
            proc = sock._start(sock._env(short, rx), port)
            try:
                assert _wait(lambda: sock._get(port, "/readyz")[0] == 200)
                sock._replay(short / "t.sock", sock.RECORDS)
                pushed = {
                    f"{span_id_for(json.loads(line)['provider_trace_id']):016x}"
                    for line in sock.RECORDS
                }
                assert _wait(lambda: _llm(rx, pushed) == pushed)
            finally:
                code, err = sock._stop(proc)
            assert code == 0, err
            from_socket = {(t, s) for t, s in rx.span_ids() if s in pushed}

            code, report, err = _export(_env(tmp_path, rx, dsn))
            assert code == 0, err
            assert report["exported"] == 53
            # One span per trace in the backend: the database's spans of the pushed traces
            # carry the very ids the socket's had (trace id and span id).
            llm = {(t, s) for t, s in rx.span_ids() if s in expected}
            assert len(llm) == 53
            assert from_socket <= llm
    finally:
        sock.shutil.rmtree(short, ignore_errors=True)
