"""The CLI as a new user meets it: the installed command, the fake Letta and a real receiver."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testkit import FakeLetta, LettaStore, OtlpReceiver
from tests.conftest import LETTA
from tests.test_cli import EXAMPLE, ROOT, _env, _otlp_lines, _spans

CLI = [str(Path(sys.executable).parent / "letta-otel-exporter")]


def _run(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=kw.pop("cwd", ROOT),
        **kw,  # type: ignore[arg-type]
    )


def _backlog(count: int) -> LettaStore:
    store = LettaStore()
    store.generate(
        count, agents=2, steps_per_run=3, seed=3, start=datetime.now(UTC) - timedelta(hours=1)
    )
    return store


def _cloud_env(tmp_path: Path, letta: FakeLetta, rx: OtlpReceiver, **extra: str) -> dict[str, str]:
    return _env(
        tmp_path,
        LETTA_BASE_URL=letta.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_base_endpoint,
        LETTA_EXPORTER_TRACE_SETTLE_SECONDS="0",
        LETTA_EXPORTER_HEALTH_PORT="0",
        **extra,
    )


def _unwritable(tmp_path: Path, name: str) -> Path:
    # Root ignores file modes: a path under a regular file can be neither created nor locked.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------- data and resume
def test_dry_run_leaves_the_checkpoint_and_the_real_export_sends(tmp_path):
    with FakeLetta(_backlog(12), flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        dry = _run(["export", "--dry-run", "--json"], env)
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["exported"] == 12
        assert not (tmp_path / "state.json").exists()
        assert rx.span_count == 0
        real = _run(["export", "--json"], env)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["exported"] == 12


def test_a_relative_window_resumes_when_run_again(tmp_path):
    with FakeLetta(_backlog(12), flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        first = _run(["export", "--since", "2h", "--json"], env)
        sent = rx.span_count
        again = _run(["export", "--since", "2h", "--json"], env)
        assert rx.span_count == sent  # nothing sent twice
    assert json.loads(first.stdout)["exported"] == 12
    assert json.loads(again.stdout)["exported"] == 0
    assert "nothing new since the last run of this command" in again.stderr


def test_input_implies_the_file_source(tmp_path):
    result = _run(["export", "--input", str(EXAMPLE)], _env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "exported 25 LLM-call spans" in result.stdout
    clash = _run(["export", "--source", "letta", "--input", str(EXAMPLE)], _env(tmp_path))
    assert clash.returncode == 2
    assert "--input" in clash.stderr


def test_check_and_export_find_an_unusable_state_path_before_sending(tmp_path):
    state = tmp_path / "state.json"
    (tmp_path / "state.json.lock").mkdir()  # the lock cannot be opened: saves would fail
    with FakeLetta(_backlog(6), flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        check = _run(["check", "--state-path", str(state)], env)
        export = _run(["export", "--state-path", str(state)], env)
        assert rx.span_count == 0
    assert check.returncode == 1
    assert "FAIL  checkpoint" in check.stdout
    assert "cannot create, lock or write" in check.stdout
    assert export.returncode == 1
    assert "CheckpointError" in export.stdout + export.stderr


def test_run_finds_an_unusable_state_path_before_sending(tmp_path):
    state = tmp_path / "state.json"
    (tmp_path / "state.json.lock").mkdir()
    with FakeLetta(_backlog(6), flavour="cloud") as letta, OtlpReceiver() as rx:
        run = _run(["run", "--state-path", str(state)], _cloud_env(tmp_path, letta, rx))
        assert rx.span_count == 0
    assert run.returncode == 1
    assert "CheckpointError" in run.stdout + run.stderr
    assert "cannot create, lock or write" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_the_dead_letter_file_is_named_only_when_used_and_a_lost_record_fails(tmp_path):
    clean = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE)], _env(tmp_path), cwd=tmp_path
    )
    assert clean.returncode == 0
    assert "dead-letter" not in clean.stdout
    assert "dead.jsonl" not in clean.stdout
    with FakeLetta.from_fixtures(LETTA) as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        named = _run(["export"], env)
        lost = _run(
            ["export", "--dead-letter-path", str(_unwritable(tmp_path, "dead.jsonl"))],
            _cloud_env(tmp_path, letta, rx, LETTA_EXPORTER_STATE_PATH=str(tmp_path / "s2.json")),
        )
    assert named.returncode == 0, named.stderr
    assert f"recorded in {tmp_path / 'dead.jsonl'}" in named.stdout
    assert lost.returncode == 1
    assert "LOST: 1 records" in lost.stdout
    assert "recorded in" not in lost.stdout


def test_convert_ends_quietly_on_a_closed_pipe(tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text(EXAMPLE.read_text() * 20)
    proc = subprocess.Popen(
        [*CLI, "convert", str(big)],
        env=_env(tmp_path, LETTA_EXPORTER_BATCH_SIZE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.read(100)
    proc.stdout.close()  # `| head`
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert err == ""


def test_convert_writes_to_a_character_device(tmp_path):
    result = _run(["convert", str(EXAMPLE), "-o", os.devnull], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "converted 25 traces" in result.stderr


def test_running_the_first_readme_command_twice_says_it_appended(tmp_path):
    args = ["export", "--source", "file", "--input", str(EXAMPLE)]
    first = _run(args, _env(tmp_path), cwd=tmp_path)
    second = _run(args, _env(tmp_path), cwd=tmp_path)
    assert "appended" not in first.stdout
    assert "appended to letta-traces.otlp.jsonl, which already held spans" in second.stdout


# ------------------------------------------------------------------------- errors
def test_a_busy_health_port_or_a_bad_host_is_one_line_and_exit_2(tmp_path):
    with FakeLetta.from_fixtures(LETTA) as letta, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(tmp_path, LETTA_BASE_URL=letta.url)
        taken = _run(["run", "--health-host", "127.0.0.1", "--health-port", str(port)], env)
        host = _run(["run", "--health-host", "999.1.1.1", "--health-port", "9"], env)
    assert taken.returncode == 2
    assert "Traceback" not in taken.stderr
    assert taken.stderr.strip().splitlines()[-1].startswith("ConfigError: health_port")
    assert host.returncode == 2
    assert host.stderr.strip().splitlines()[-1].startswith("ConfigError: health_host")


def test_convert_without_input_on_a_terminal_is_a_usage_message(tmp_path):
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [*CLI, "convert"],
            env=_env(tmp_path),
            stdin=follower,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 2
    assert "give INPUT" in result.stderr


def test_export_from_a_terminal_stdin_is_a_usage_message(tmp_path):
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [*CLI, "export", "--input", "-"],
            env=_env(tmp_path),
            stdin=follower,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 2
    assert "stdin is a terminal" in result.stderr


def test_ctrl_c_stops_convert_waiting_on_stdin(tmp_path):
    proc = subprocess.Popen(
        [*CLI, "convert", "-"],
        env=_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # let it reach the read; the assertion below does not depend on it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()


@pytest.mark.parametrize(
    ("protocol", "port", "says"),
    [
        (
            "grpc",
            "http",
            "speaks HTTP/1.1, not gRPC; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        ),
        ("http/protobuf", "grpc", "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
    ],
)
def test_a_protocol_mismatch_is_named(tmp_path, protocol, port, says):
    with OtlpReceiver() as rx:
        endpoint = f"http://127.0.0.1:{rx.http_port if port == 'http' else rx.grpc_port}"
        env = _env(
            tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol
        )
        check = _run(["check", "--otlp-timeout-ms", "3000"], env)
        export = _run(
            ["export", "--source", "file", "--input", str(EXAMPLE), "--export-deadline", "1"], env
        )
    assert says in check.stdout
    assert says in export.stderr
    assert export.returncode == 1


def test_collector_down_prints_the_summary_once(tmp_path):
    env = _env(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_free_port()}",
        LETTA_EXPORTER_OTLP_TIMEOUT_MS="300",
    )
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE), "--export-deadline", "1"], env
    )
    assert result.returncode == 1
    assert result.stdout.count("traces not delivered") == 1


def test_export_json_fills_error_on_failure(tmp_path):
    down = _env(
        tmp_path, LETTA_BASE_URL=f"http://127.0.0.1:{_free_port()}", LETTA_EXPORTER_MAX_RETRIES="0"
    )
    result = _run(["export", "--json", "--sink", "console"], down)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert "127.0.0.1" in data["error"]
    bad = _run(["export", "--json"], _env(tmp_path, LETTA_EXPORTER_CONTENT="all"))
    assert bad.returncode == 2
    assert "content" in json.loads(bad.stdout)["error"]


def test_run_with_a_refused_key_ends_not_ok_on_sigterm(tmp_path):
    with FakeLetta.from_fixtures(LETTA, api_key="right") as letta:
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            LETTA_API_KEY="wrong",
            LETTA_EXPORTER_SINK="console",
            LETTA_EXPORTER_HEALTH_PORT="0",
            LETTA_EXPORTER_POLL_INTERVAL_SECONDS="0.2",
            LETTA_EXPORTER_LOG_FORMAT="json",
        )
        proc = subprocess.Popen(
            [*CLI, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(letta.requests) < 3:  # passes failed
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1
    (stopped,) = [
        json.loads(line)["message"]
        for line in err.splitlines()
        if line.startswith("{") and json.loads(line)["message"].startswith("stopped")
    ]
    assert '"ok": false' in stopped
    assert "wrong" not in err


def test_a_bad_toml_value_names_the_file_and_key(tmp_path):
    config = tmp_path / "exporter.toml"
    config.write_text('since = "last tuesday"\n')
    result = _run(["export", "--config", str(config)], _env(tmp_path))
    assert result.returncode == 2
    assert f"since ({config}, key since)" in result.stderr
    flag = _run(["export", "--since", "soon"], _env(tmp_path))
    assert "since (flag --since)" in flag.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_insecure_takes_host_port(tmp_path, protocol):
    with OtlpReceiver() as rx:
        port = rx.grpc_port if protocol == "grpc" else rx.http_port
        env = _env(tmp_path, OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
        result = _run(
            [
                "export",
                "--source",
                "file",
                "--input",
                str(EXAMPLE),
                "--otlp-endpoint",
                f"127.0.0.1:{port}",
                "--otlp-insecure",
                "--export-deadline",
                "10",
            ],
            env,
        )
        assert result.returncode == 0, result.stderr
        assert rx.span_count > 25


def test_check_says_what_is_there_once(tmp_path):
    with FakeLetta(_backlog(9), flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        before = _run(["check"], env)
        _run(["export"], env)
        after = _run(["check"], env)
    assert before.returncode == 0, before.stdout + before.stderr
    assert before.stdout.count(rx.http_base_endpoint) == 1
    assert "not found" in before.stdout
    assert "9 steps in 3 runs" in before.stdout
    assert "5 of the first 5 have a provider trace" in before.stdout
    assert "9 traces delivered so far" in after.stdout


def test_nothing_to_export_says_why_with_exit_0(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    file = _run(["export", "--source", "file", "--input", str(empty)], _env(tmp_path), cwd=tmp_path)
    assert file.returncode == 0
    assert "holds no traces" in file.stderr
    with FakeLetta(_backlog(6), flavour="cloud") as letta, OtlpReceiver() as rx:
        env = _cloud_env(tmp_path, letta, rx)
        future = _run(["export", "--since", "2099-01-01T00:00:00Z", "--until", "2099-02-01"], env)
        agent = _run(["export", "--agent-id", "agent-nobody"], env)
    assert future.returncode == 0
    assert "is in the future" in future.stderr
    assert agent.returncode == 0
    assert "agent-nobody: Letta has no such agent" in agent.stderr


# ------------------------------------------------------------------------- the sample
def test_the_sample_carries_durations_and_agent_names(tmp_path):
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE)], _env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    spans = _spans(_otlp_lines((tmp_path / "letta-traces.otlp.jsonl").read_text()))
    calls = [s for s in spans if not s.name.startswith("invoke_agent")]
    assert sum(s.end_time_unix_nano > s.start_time_unix_nano for s in calls) >= 15
    names = {
        a.value.string_value for s in spans for a in s.attributes if a.key == "gen_ai.agent.name"
    }
    assert {"openai-helper", "claude-helper"} <= names


def test_shift_to_now_moves_the_sample_forward(tmp_path):
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE), "--shift-to-now"],
        _env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    spans = _spans(_otlp_lines((tmp_path / "letta-traces.otlp.jsonl").read_text()))
    recorded = datetime(2026, 11, 21, 9, tzinfo=UTC).timestamp() * 1e9
    assert min(s.start_time_unix_nano for s in spans) > recorded  # all moved past the recording


# ------------------------------------------------------------------------- progress
def test_export_on_a_terminal_shows_progress_and_logs_above_it(tmp_path):
    leader, follower = pty.openpty()
    env = _env(tmp_path, TERM="xterm-256color", COLUMNS="120")
    proc = subprocess.Popen(
        [*CLI, "export", "--source", "file", "--input", str(EXAMPLE)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        proc.wait(timeout=30)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "traces/s" in text
    assert "25/25" in text
    assert "exported 25 LLM-call spans" in text


def test_no_progress_when_stdout_is_not_a_terminal(tmp_path):
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE)], _env(tmp_path), cwd=tmp_path
    )
    assert "traces/s" in result.stdout  # the summary's rate
    assert "\x1b[" not in result.stdout + result.stderr


def test_collector_down_says_what_it_waits_for(tmp_path):
    env = _env(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_free_port()}",
        LETTA_EXPORTER_OTLP_TIMEOUT_MS="200",
    )
    result = _run(
        ["export", "--source", "file", "--input", str(EXAMPLE), "--export-deadline", "3"], env
    )
    assert result.returncode == 1
    assert "waiting for the collector at OTLP http/protobuf http://127.0.0.1:" in result.stderr
