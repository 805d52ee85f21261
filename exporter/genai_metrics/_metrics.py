"""GenAI metrics from delivered LLM spans, recorded with the OpenTelemetry metrics SDK."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Counter
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ..sink._tls import TlsFiles
from . import _names as n
from ._ledger import CountedLedger, span_key
from ._measure import CallMeasurement, measure_span
from ._transport import MetricsProtocol, OtlpMetricsTransport, Temporality

__all__ = ["GenAIMetrics"]

_logger = logging.getLogger(__name__)

DEFAULT_EXPORT_INTERVAL_S = 60.0


class GenAIMetrics:
    """Records the GenAI metrics of each delivered span batch, each span counted once.

    Call :meth:`record_delivered` once per batch the collector accepted, before the checkpoint
    moves past it. With ``flush_on_delivery`` (the default) the batch's metrics are exported
    before the ledger remembers its spans, so a kill can at most count the batch in flight twice
    and never loses a recorded one. The call blocks for that export (up to ``timeout``): call it
    off the event loop (``asyncio.to_thread``). While the metrics service fails, batches are not
    flushed one by one; the periodic export carries them (cumulative) when it is back.

    Args:
        exporter: where the metrics go (:class:`OtlpMetricsTransport`, or a test exporter).
        resource: the resource of the metrics (the spans' one, so they share ``service.name``).
        agent_attribute: add ``gen_ai.agent.name`` / ``gen_ai.agent.id`` (one series per agent).
        ledger: the counted-once ledger (default: in memory only).
        export_interval_s: the periodic export, a backstop to ``flush_on_delivery``.
        flush_on_delivery: export at the end of each :meth:`record_delivered`.
        cost_attribute: the span attribute holding a call's price in USD.
    """

    def __init__(
        self,
        exporter: MetricExporter,
        *,
        resource: Resource,
        agent_attribute: bool = False,
        ledger: CountedLedger | None = None,
        export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S,
        flush_on_delivery: bool = True,
        cost_attribute: str = n.COST_ATTRIBUTE,
    ) -> None:
        self._agent_attribute = agent_attribute
        self._cost_attribute = cost_attribute
        self._ledger = ledger if ledger is not None else CountedLedger()
        self._flush_on_delivery = flush_on_delivery
        self._exporter = exporter
        self._lock = threading.Lock()
        self._closed = False
        self._reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=export_interval_s * 1000
        )
        # The filter is given, not read from OTEL_METRICS_EXEMPLAR_FILTER: exemplars are kept
        # for measurements recorded inside a sampled span's context (see _context_of).
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            resource=resource,
            exemplar_filter=TraceBasedExemplarFilter(),
            shutdown_on_exit=False,
        )
        meter = self._provider.get_meter(n.METER_NAME)
        self._tokens = meter.create_histogram(
            n.TOKEN_USAGE_METRIC,
            unit=n.TOKEN_USAGE_UNIT,
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(n.TOKEN_BUCKETS),
        )
        self._duration = meter.create_histogram(
            n.DURATION_METRIC,
            unit=n.DURATION_UNIT,
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(n.DURATION_BUCKETS),
        )
        self._cache_read = meter.create_counter(
            n.CACHE_READ_METRIC, unit=n.TOKEN_USAGE_UNIT, description="Cached input tokens read."
        )
        self._cache_write = meter.create_counter(
            n.CACHE_WRITE_METRIC,
            unit=n.TOKEN_USAGE_UNIT,
            description="Input tokens written to the provider's cache.",
        )
        self._reasoning = meter.create_counter(
            n.REASONING_METRIC, unit=n.TOKEN_USAGE_UNIT, description="Reasoning output tokens."
        )
        self._cost = meter.create_counter(
            n.COST_METRIC, unit=n.COST_UNIT, description="Price of the model calls, in USD."
        )
        self._unpriced = meter.create_counter(
            n.UNPRICED_METRIC,
            unit=n.UNPRICED_UNIT,
            description="Model calls with no price (a model the price list does not know).",
        )

    @classmethod
    def from_config(
        cls,
        *,
        endpoint: str,
        protocol: MetricsProtocol,
        resource: Resource,
        headers: Mapping[str, str] | None = None,
        temporality: Temporality = "cumulative",
        agent_attribute: bool = False,
        ledger_path: Path | str | None = None,
        timeout: float = 10.0,
        compression: Literal["none", "gzip"] = "none",
        insecure: bool | None = None,
        tls: TlsFiles | None = None,
        export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S,
        flush_on_delivery: bool = True,
    ) -> GenAIMetrics:
        """GenAI metrics sent over OTLP to the traces' collector.

        Args:
            endpoint: the traces' collector endpoint (for HTTP, ``/v1/traces`` becomes
                ``/v1/metrics``).
            protocol: ``grpc`` or ``http/protobuf``, as for traces.
            resource: the spans' resource.
            headers: the traces' OTLP headers.
            temporality: ``cumulative`` (Prometheus), ``delta`` or ``lowmemory``.
            agent_attribute: add the agent to every series.
            ledger_path: the counted-once ledger file (beside the state file); ``None``: memory.
            timeout: seconds per export request.
            compression: ``gzip`` or ``none``.
            insecure: for a gRPC endpoint without a scheme.
            tls: the traces' certificate files.
            export_interval_s: the periodic export interval.
            flush_on_delivery: export at the end of each delivered batch.

        Raises:
            ConfigError: a bad endpoint, header, protocol or temporality.
            OSError: the ledger file exists and cannot be read.
        """
        exporter = OtlpMetricsTransport(
            protocol=protocol,
            endpoint=endpoint,
            headers=headers,
            temporality=temporality,
            timeout=timeout,
            compression=compression,
            insecure=insecure,
            tls=tls,
        )
        return cls(
            exporter,
            resource=resource,
            agent_attribute=agent_attribute,
            ledger=CountedLedger(ledger_path),
            export_interval_s=export_interval_s,
            flush_on_delivery=flush_on_delivery,
        )

    @property
    def ledger(self) -> CountedLedger:
        """The counted-once ledger."""
        return self._ledger

    def record_delivered(self, spans: Sequence[ReadableSpan]) -> int:
        """Count the model calls of a batch the collector accepted; never raises.

        Spans already counted (by key, in the ledger) add nothing; run spans and other
        non-call spans are skipped.

        Returns:
            How many calls were counted.
        """
        with self._lock:
            if self._closed:
                return 0
            fresh: list[CallMeasurement] = []
            seen: dict[str, None] = {}  # in delivery order
            for span in spans:
                measurement = measure_span(
                    span, agent_attribute=self._agent_attribute, cost_attribute=self._cost_attribute
                )
                if measurement is None:
                    continue
                if self._ledger.contains(measurement.trace_id, measurement.span_id):
                    continue
                key = span_key(measurement.trace_id, measurement.span_id)
                if key in seen:
                    continue
                seen[key] = None
                fresh.append(measurement)
            if not fresh:
                return 0
            totals: dict[_TotalKey, _Total] = {}
            for measurement in fresh:
                self._record(measurement, totals)
            # Counters are added once per attribute set and batch, not once per call: the SDK's
            # cost is per measurement, and a sum is the same either way. The exemplar points at
            # the group's last call.
            for (counter, group), total in totals.items():
                counter.add(total.value, dict(group), context=total.context)
            if self._flush_on_delivery and self._worth_flushing():
                self._reader.force_flush()
            self._ledger.add(list(seen))
            return len(fresh)

    def _record(self, call: CallMeasurement, totals: dict[_TotalKey, _Total]) -> None:
        context = _context_of(call)
        attributes = dict(call.attributes)
        if call.duration_s is not None:
            timed = dict(attributes)
            if call.error_type is not None:
                timed[n.ERROR_ATTRIBUTE] = call.error_type
            self._duration.record(call.duration_s, timed, context=context)
        for token_type, value in (
            (n.TOKEN_TYPE_INPUT, call.input_tokens),
            (n.TOKEN_TYPE_OUTPUT, call.output_tokens),
        ):
            if value is not None:
                self._tokens.record(
                    value, {**attributes, n.GEN_AI_TOKEN_TYPE: token_type}, context=context
                )
        shared = tuple(attributes.items())
        detailed = (*shared, (n.GEN_AI_TOKEN_MODALITY, n.MODALITY_UNKNOWN))
        counted: list[tuple[Counter, _Key, float]] = []
        for counter, tokens in (
            (self._cache_read, call.cache_read_tokens),
            (self._cache_write, call.cache_write_tokens),
            (self._reasoning, call.reasoning_tokens),
        ):
            if tokens:
                counted.append((counter, detailed, tokens))
        if call.cost_usd is not None:
            counted.append((self._cost, shared, call.cost_usd))
        elif call.unpriced:
            counted.append((self._unpriced, shared, 1))
        for counter, key, amount in counted:
            total = totals.get((counter, key))
            if total is None:
                totals[(counter, key)] = _Total(amount, context)
            else:
                total.value += amount
                total.context = context

    def _worth_flushing(self) -> bool:
        # A failing or absent metrics service is not waited on once per batch: the periodic
        # export retries it, and the traces' batches go on at their own pace.
        exporter = self._exporter
        return not isinstance(exporter, OtlpMetricsTransport) or exporter.healthy

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export what is recorded now."""
        return bool(self._provider.force_flush(timeout_millis=timeout_s * 1000))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Export what is left and stop; later batches are ignored."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._provider.shutdown(timeout_millis=timeout_s * 1000)


@dataclass(slots=True)
class _Total:
    """A counter's sum over one batch, and the context of its last call (for the exemplar)."""

    value: float
    context: Context


_Key = tuple[tuple[str, str | int], ...]
_TotalKey = tuple[Counter, _Key]


def _context_of(call: CallMeasurement) -> Context:
    """A context whose current span is the call's (sampled), so the exemplar points at it."""
    span_context = SpanContext(
        trace_id=call.trace_id,
        span_id=call.span_id,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))
