"""A small run of the benchmark, so it cannot rot: every span arrives once, every figure is there.

No timing is asserted: the benchmark reports speed, the suite only checks that it works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.backlog import SIZES, BacklogSpec, build_store, expected_span_ids, sized_request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_FIGURES = {
    "traces",
    "seconds",
    "traces_per_second",
    "cpu_seconds",
    "cpu_per_1k",
    "peak_rss_mb",
    "expected_spans",
    "received_unique",
    "lost",
    "duplicates",
    "unexpected",
    "letta_requests",
    "max_in_flight",
}


def test_requests_are_resized_to_the_target() -> None:
    store, backlog = build_store(BacklogSpec(traces=30, size="2kb", steps_per_run=3))
    assert len(store) == 30
    assert len(backlog.run_ids) == 10
    assert len(expected_span_ids(backlog)) == 40
    for size in backlog.request_bytes.values():
        assert abs(size - SIZES["2kb"]) <= SIZES["2kb"] * 0.05
    grown = sized_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 20_000)
    assert abs(len(json.dumps(grown, separators=(",", ":"))) - 20_000) <= 200
    assert grown["messages"][-1] == {"role": "user", "content": "hi"}


def test_smoke_run_delivers_every_span_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "bench.json"
    code = bench_run.main(
        ["--traces", "300", "--size", "2kb", "--protocol", "grpc", "--json", str(out)]
    )
    code_http = bench_run.main(
        [
            "--traces",
            "200",
            "--size",
            "20kb",
            "--latency-ms",
            "2",
            "--protocol",
            "http",
            "--concurrency",
            "4",
            "--flavour",
            "0.16.8",
            "--json",
            str(tmp_path / "runs.json"),
        ]
    )
    table = capsys.readouterr().out
    assert code == 0
    assert code_http == 0
    for header in ("traces/s", "x base", "CPU s/1k", "peak RSS MB", "lost", "dup"):
        assert header in table
    [result] = json.loads(out.read_text())
    exporter, baseline = result["exporter"], result["baseline"]
    assert exporter.keys() >= _FIGURES
    assert baseline.keys() >= _FIGURES
    assert set(result["ratios"]) == {"traces_per_second", "cpu_per_1k", "peak_rss_mb"}
    assert exporter["error"] == ""
    assert exporter["traces"] == 300
    assert exporter["expected_spans"] == 300 + 150  # LLM spans and run spans
    assert exporter["lost"] == exporter["duplicates"] == exporter["unexpected"] == 0
    assert exporter["max_in_flight"] <= 16
    assert baseline["traces"] == 300
    assert baseline["error"] == ""
    assert baseline["lost"] >= 0  # reported, whatever it is
    [runs] = json.loads((tmp_path / "runs.json").read_text())
    assert runs["baseline"] is None  # the baseline needs the steps list (not on 0.16.8)
    assert runs["exporter"]["traces"] == 200
    assert runs["exporter"]["lost"] == runs["exporter"]["duplicates"] == 0
    assert runs["exporter"]["max_in_flight"] <= 4
