"""Unit checks behind the CLI's behaviour: stream keys, the checkpoint probe, bind errors."""

from __future__ import annotations

import socket

import pytest

from exporter import wiring
from exporter.commands import probe_state
from exporter.errors import CheckpointError, ConfigError
from exporter.settings import Settings
from exporter.telemetry import HealthServer, Metrics


def test_a_relative_window_keeps_its_stream_key_while_its_time_moves():
    first = Settings.load(since="2h", until="5m")
    later = Settings.load(since="2h", until="5m")
    assert (first.since_spec, first.until_spec) == ("2h", "5m")
    assert wiring.stream(first, window=True) == wiring.stream(later, window=True)
    assert wiring.stream(first, window=True) != wiring.stream(
        Settings.load(since="3h"), window=True
    )
    absolute = Settings.load(since="2026-11-01T00:00:00Z")
    assert absolute.since_spec is None
    assert wiring.stream(absolute, window=True) != wiring.stream(first, window=True)


def test_probe_state_says_not_found_then_how_far(tmp_path):
    path = tmp_path / "state.json"
    assert "not found" in probe_state(path)
    assert not path.exists()
    path.write_text('{"version":1,"streams":{"a":{"delivered":7,"pending":{},"open_runs":{}}}}')
    assert "7 traces delivered so far" in probe_state(path)


def test_probe_state_fails_when_the_lock_cannot_be_made(tmp_path):
    (tmp_path / "state.json.lock").mkdir()
    with pytest.raises(CheckpointError, match="cannot create, lock or write"):
        probe_state(tmp_path / "state.json")


def test_a_busy_health_port_is_a_config_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="health_port"):
            HealthServer(
                host="127.0.0.1",
                port=port,
                metrics=Metrics(),
                alive=lambda: True,
                ready=lambda: True,
            )
