"""A small run of the PostgreSQL benchmark, so it cannot rot: every trace encoded once.

No timing is asserted: the benchmark reports speed, the suite only checks that it works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import postgres as bench_postgres

from .pg_support import server_dsn

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_small_postgres_benchmark_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORTER_TEST_PG_DSN", server_dsn())
    out = tmp_path / "figures.json"
    code = bench_postgres.main(
        [
            "--traces",
            "300",
            "--size",
            "2kb",
            "--workers",
            "2",
            "--limits",
            "100",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    figures = json.loads(out.read_text())
    assert [(f["workers"], f["traces"], f["lost"]) for f in figures] == [(2, 300, 0), (1, 100, 0)]
    for f in figures:
        assert f["unique_spans"] == f["traces"]
        assert f["unreadable"] == 0
        assert f["exporter_cpu_s_per_1k"] > 0
        assert f["peak_rss_mb"] > 0
