"""What one exported LLM span contributes to the GenAI metrics (pure: no SDK, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from . import _names as n

__all__ = ["CallMeasurement", "measure_span"]

Attributes = Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class CallMeasurement:
    """The measurements of one model call.

    Attributes:
        trace_id: the span's trace id (for the exemplar and the ledger).
        span_id: the span's id.
        attributes: the metric attributes shared by every instrument (no ``error.type``).
        error_type: the span's ``error.type``, for the duration histogram only.
        duration_s: the call's duration in seconds (``None``: the span has no times).
        input_tokens: ``gen_ai.usage.input_tokens`` (``None``: absent).
        output_tokens: ``gen_ai.usage.output_tokens``.
        cache_read_tokens: cached input tokens read.
        cache_write_tokens: input tokens written to the cache.
        reasoning_tokens: reasoning output tokens.
        cost_usd: the call's price (``None``: no price attribute).
        has_model: the span names a model (a call without a price is then "unpriced").
    """

    trace_id: int
    span_id: int
    attributes: Attributes
    error_type: str | None
    duration_s: float | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None
    has_model: bool

    @property
    def unpriced(self) -> bool:
        """A call to a named model that carries no price: the price list does not know it."""
        return self.has_model and self.cost_usd is None


def measure_span(
    span: ReadableSpan, *, agent_attribute: bool, cost_attribute: str = n.COST_ATTRIBUTE
) -> CallMeasurement | None:
    """The measurements of ``span``, or ``None`` when it is not a model call.

    A model call is a span with a ``gen_ai.operation.name`` that is not an agent, tool or
    workflow operation (the ``invoke_agent`` run spans time a whole run, not a call).
    """
    attributes = span.attributes or {}
    operation = attributes.get(n.OPERATION)
    context = span.context
    if not isinstance(operation, str) or operation in n.NOT_MODEL_CALLS or context is None:
        return None
    names = n.CALL_ATTRIBUTES + (n.AGENT_ATTRIBUTES if agent_attribute else ())
    shared: dict[str, str | int] = {}
    for name in names:
        value = attributes.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            shared[name] = value
    error = attributes.get(n.ERROR_ATTRIBUTE)
    duration = None
    if span.start_time is not None and span.end_time is not None:
        duration = max(span.end_time - span.start_time, 0) / 1e9
    return CallMeasurement(
        trace_id=context.trace_id,
        span_id=context.span_id,
        attributes=shared,
        error_type=error if isinstance(error, str) and error else None,
        duration_s=duration,
        input_tokens=_count(attributes.get(n.INPUT_TOKENS)),
        output_tokens=_count(attributes.get(n.OUTPUT_TOKENS)),
        cache_read_tokens=_count(attributes.get(n.CACHE_READ_TOKENS)),
        cache_write_tokens=_count(attributes.get(n.CACHE_WRITE_TOKENS)),
        reasoning_tokens=_count(attributes.get(n.REASONING_TOKENS)),
        cost_usd=_price(attributes.get(cost_attribute)),
        has_model=any(
            isinstance(attributes.get(name), str) and attributes.get(name)
            for name in (n.REQUEST_MODEL, n.RESPONSE_MODEL)
        ),
    )


def _count(value: Any) -> int | None:
    # A bool is an int to Python but never a token count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _price(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        price = float(value)
        if math.isfinite(price) and price >= 0:
            return price
    return None
