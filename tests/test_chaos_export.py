"""Chaos: a one-shot export killed with SIGKILL at random moments over a backlog, then run again,
loses nothing, and every span sent twice is sent identical."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import defaultdict

from testkit import FakeLetta, OtlpReceiver
from tests.test_cli import CLI, ROOT, _env, _run
from tests.test_failure_letta import _span_ids, _store

#: Kills at most (each after a random delay); the test stays within a minute or two.
_KILLS = 6


def test_export_killed_at_random_moments_loses_nothing_and_duplicates_are_identical(tmp_path):
    draw = random.Random(20261201)
    store = _store(600)
    with FakeLetta(store, flavour="cloud") as letta, OtlpReceiver() as rx:
        expected = _span_ids(letta, store.step_ids())
        env = _env(
            tmp_path,
            LETTA_BASE_URL=letta.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_BATCH_SIZE="16",
        )
        rx.set_delay(0.1)
        kills = 0
        for _ in range(_KILLS):
            proc = subprocess.Popen(
                [*CLI, "export", "--json"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(draw.uniform(0.5, 2.0))
            if proc.poll() is not None:
                proc.communicate()
                break  # it finished before the kill came
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            kills += 1
            rx.wait_idle(10)
        rx.set_delay(0)
        final = _run(["export", "--json"], env)
        spans = rx.spans()
    assert kills >= 3  # really cut short, several times
    assert final.returncode == 0, final.stderr[-3000:]
    assert json.loads(final.stdout)["ok"] is True
    by_id: dict[str, list[bytes]] = defaultdict(list)
    for received in spans:
        by_id[received.span_id].append(received.span.SerializeToString(deterministic=True))
    assert expected <= set(by_id)  # nothing lost
    for copies in by_id.values():
        assert len(set(copies)) == 1  # a duplicate is the same span, byte for byte
