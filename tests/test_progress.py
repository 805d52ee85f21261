"""The export progress bar, rendered: done/total, rate, run count from the metrics."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta

from rich.console import Console

from exporter.progress import ExportProgress, count_records
from exporter.shipping import ExportSummary
from exporter.source import read_trace_file
from exporter.telemetry import Metrics
from exporter.timeshift import shift_offset, shift_record
from tests.test_cli import EXAMPLE


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def test_the_bar_shows_done_of_total_the_rate_and_the_runs_shipped():
    console, out = _console()
    metrics = Metrics()
    progress = ExportProgress(enabled=True, metrics=metrics, total=25, console=console)
    with progress:
        metrics.traces_exported.inc(10)
        metrics.run_spans_exported.inc(4)
        progress.update(ExportSummary(exported=10))
        progress.render()
    text = out.getvalue()
    assert "10/25" in text
    assert "traces/s" in text
    assert "4 runs" in text


def test_logs_go_through_the_bar_and_the_handlers_come_back():
    console, out = _console()
    root = logging.getLogger()
    before = root.handlers[:]
    with ExportProgress(enabled=True, metrics=Metrics(), console=console):
        logging.getLogger("exporter.test").warning("a line above the bar")
    assert "a line above the bar" in out.getvalue()
    assert root.handlers == before


def test_disabled_draws_nothing():
    console, out = _console()
    with ExportProgress(enabled=False, metrics=Metrics(), total=3, console=console) as progress:
        progress.update(ExportSummary(exported=3))
        progress.render()
    assert out.getvalue() == ""


def test_count_records_knows_json_lines_only(tmp_path):
    assert count_records(EXAMPLE) == 25
    doc = tmp_path / "doc.json"
    doc.write_text('[\n  {"id": 1}\n]\n')
    assert count_records(doc) is None
    assert count_records("-") is None


def test_shift_moves_every_time_by_one_offset():
    with read_trace_file(EXAMPLE) as reader:
        records = list(reader.with_context())
    newest = max(r.trace.created_at for r in records if r.trace.created_at)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    delta = shift_offset(newest, now=now)
    assert newest + delta == now
    moved = [shift_record(r, delta) for r in records]
    assert max(r.trace.created_at for r in moved if r.trace.created_at) == now
    with_metrics = [(a, b) for a, b in zip(records, moved, strict=True) if a.metrics]
    assert with_metrics
    for before, after in with_metrics:
        assert after.metrics.llm_request_ns == before.metrics.llm_request_ns  # durations kept
    assert shift_offset(None, now=now) == timedelta(0)
