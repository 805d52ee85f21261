"""Delivering to any ``SpanExporter``: ours say what happened, the SDK's are folded in."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ._base import DeliveringExporter, Delivery, one_line

__all__ = ["deliver"]


def deliver(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> Delivery:
    """Send one batch through any exporter and say what happened; never raises.

    Ours answer through :meth:`DeliveringExporter.deliver` (partial success, permanence, retry
    delay); any other ``SpanExporter`` (``InMemorySpanExporter``, a stock OTLP exporter) has its
    ``SUCCESS``/``FAILURE`` folded into a :class:`Delivery` that is never permanent, since a
    bare ``FAILURE`` does not say retrying is hopeless.
    """
    if isinstance(exporter, DeliveringExporter):
        return exporter.deliver(spans)
    if not spans:
        return Delivery(delivered=True)
    name = type(exporter).__name__
    try:
        result = exporter.export(spans)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Delivery(
            delivered=False, message=f"{name} raised {type(exc).__name__}: {one_line(str(exc))}"
        )
    if result is SpanExportResult.SUCCESS:
        return Delivery(delivered=True)
    return Delivery(delivered=False, message=f"{name} returned {getattr(result, 'name', result)}")
