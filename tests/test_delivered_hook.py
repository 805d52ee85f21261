"""The delivered-spans hook (the GenAI metrics' entry), and conversion notes in the log.

The hook runs after the collector accepted a batch and before ``ship`` returns (so before the
checkpoint moves); never for a batch refused for good, nor in a dry run, nor before a retried
batch is accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan

from exporter import wiring
from exporter.convert import ConvertOptions, build_resource
from exporter.genai_metrics import GenAIMetrics
from exporter.models import ProviderTrace
from exporter.notes import ConversionNotes
from exporter.replay import export_traces
from exporter.shipping import ExportSummary
from exporter.sink import Delivery
from testkit import OtlpReceiver
from tests._metric_spans import call_span
from tests._sink_spans import make_batch
from tests.test_shipping import FakeTime, ScriptedExporter, shipper_for


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class Seen:
    def __init__(self, log: list[str], name: str = "hook") -> None:
        self.batches: list[int] = []
        self.log = log
        self.name = name

    async def __call__(self, spans: Sequence[ReadableSpan]) -> None:
        self.batches.append(len(spans))
        self.log.append(self.name)


def test_the_hook_sees_each_accepted_batch_once_after_the_retries(tmp_path):
    log: list[str] = []
    seen = Seen(log)
    exporter = ScriptedExporter(Delivery(False, message="down"), Delivery(True))
    shipper, _ = shipper_for(exporter, tmp_path, FakeTime(), on_delivered=seen)
    assert run(shipper.ship(make_batch(3), ["a"], ExportSummary()))
    assert exporter.attempts == [3, 3]
    assert seen.batches == [3]  # once, after the accepted attempt


def test_no_hook_for_a_refused_batch_or_a_dry_run(tmp_path):
    seen = Seen([])
    refused = ScriptedExporter(Delivery(False, permanent=True, message="bad"))
    shipper, _ = shipper_for(refused, tmp_path, FakeTime(), on_delivered=seen)
    assert not run(shipper.ship(make_batch(2), ["a"], ExportSummary()))
    dry, _ = shipper_for(
        ScriptedExporter(Delivery(True)), tmp_path, FakeTime(), on_delivered=seen, dry_run=True
    )
    assert run(dry.ship(make_batch(2), ["a"], ExportSummary()))
    assert seen.batches == []


def test_the_wired_hook_records_the_batch_before_ship_returns(tmp_path):
    with OtlpReceiver() as rx:
        metrics = GenAIMetrics.from_config(
            endpoint=rx.grpc_endpoint,
            protocol="grpc",
            resource=build_resource(),
            temporality="delta",
            export_interval_s=600,
        )
        try:
            hook = wiring.delivered_hook(metrics)
            assert hook is not None
            shipper, _ = shipper_for(
                ScriptedExporter(Delivery(True)), tmp_path, FakeTime(), on_delivered=hook
            )
            assert run(shipper.ship([call_span(1), call_span(2)], ["a", "b"], ExportSummary()))
            # Recorded and flushed by the time ship returned: the checkpoint may move now.
            assert metrics.ledger.contains(*_ids(call_span(1)))
            assert rx.wait_for_metric_requests(1)
            assert sum(p.count for p in rx.points("gen_ai.client.operation.duration")) == 2
        finally:
            metrics.shutdown()
    assert wiring.delivered_hook(None) is None


def _ids(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


def test_conversion_notes_are_logged_once_per_kind_with_the_repeats_counted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="exporter")
    early = [
        ProviderTrace.model_validate(
            {
                "id": f"provider_trace-{n:08d}-0000-4000-8000-000000000000",
                "request_json": {"model": "gpt-4o-mini", "messages": []},
                "response_json": {},
                "created_at": "1990-01-01T00:00:00Z",
            }
        )
        for n in range(5)
    ]
    exporter = ScriptedExporter(Delivery(True))
    shipper, _ = shipper_for(exporter, tmp_path, FakeTime())
    summary = run(
        export_traces(
            early, shipper=shipper, convert_options=ConvertOptions(), resource=build_resource()
        )
    )
    assert summary.exported == 5
    lines = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "created_at: before 2000" in r.getMessage()
    ]
    assert len(lines) == 1  # five records, one line
    assert "provider_trace-00000000" in lines[0].getMessage()
    held = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "created_at" in r.getMessage()
    ]
    assert len(held) == 4


def test_notes_of_a_clean_span_log_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="exporter")
    assert ConversionNotes().log(call_span(1), "x") == 0
    assert not caplog.records
