"""``python -m testkit fake-letta`` and ``otlp-receiver``: started as processes, hit, stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from exporter.genai_metrics import GenAIMetrics
from exporter.sink import OtlpHttpExporter
from tests._metric_spans import RESOURCE, call_span

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@contextmanager
def run_testkit(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The process and its ``listening`` line; stopped with SIGINT (Ctrl-C) at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert "listening" in line, process.stderr.read() if process.stderr else line
        yield process, line
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            if process.stderr is not None:
                process.stderr.close()


def test_fake_letta_serves_the_recorded_fixtures_until_ctrl_c():
    with run_testkit("fake-letta", "--port", "0") as (process, line):
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        assert httpx.get(f"{url}/v1/health/").status_code == 200
        steps = httpx.get(f"{url}/v1/runs/", params={"limit": 5}).json()
        assert steps, "the fixtures' runs are served"
    assert process.returncode == 0


def test_fake_letta_cloud_flavour_and_api_key():
    with run_testkit("fake-letta", "--port", "0", "--flavour", "cloud", "--api-key", "k") as (
        _,
        line,
    ):
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)  # type: ignore[union-attr]
        assert httpx.get(f"{url}/v1/runs/").status_code == 401
        ok = httpx.get(f"{url}/v1/runs/", headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200


def test_otlp_receiver_prints_spans_and_metric_points_until_ctrl_c():
    args = ("otlp-receiver", "--grpc-port", "0", "--http-port", "0", "--print")
    with run_testkit(*args) as (process, line):
        match = re.search(r"grpc (http://\S+) http (http://\S+)", line)
        assert match, line
        grpc_url, http_url = match.groups()
        exporter = OtlpHttpExporter(endpoint=f"{http_url}/v1/traces")
        try:
            assert exporter.deliver([call_span(1)]).delivered
        finally:
            exporter.shutdown()
        metrics = GenAIMetrics.from_config(endpoint=grpc_url, protocol="grpc", resource=RESOURCE)
        try:
            metrics.record_delivered([call_span(1)])
        finally:
            metrics.shutdown()
        assert process.stdout is not None
        printed = []
        while not any("gen_ai.client.operation.duration" in text for text in printed):
            printed.append(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        printed += process.stdout.read().splitlines()
    assert process.returncode == 0
    text = "\n".join(printed)
    assert "span  http" in text
    assert "model=gpt-4o-mini tokens 101/7" in text
    assert "point grpc gen_ai.client.token.usage histogram cumulative" in text
    assert re.search(r"received 1 spans, \d+ metric points", text)


def test_otlp_receiver_can_answer_metrics_like_jaeger():
    args = ("otlp-receiver", "--grpc-port", "0", "--http-port", "0", "--no-metrics")
    with run_testkit(*args) as (_, line):
        http_url = re.search(r"http (http://\S+)", line).group(1)  # type: ignore[union-attr]
        answer = httpx.post(
            f"{http_url}/v1/metrics",
            content=b"",
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert answer.status_code == 404
