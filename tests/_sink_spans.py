"""Span batches for the sink tests, built the way the worker builds them.

``ReadableSpan`` straight from its constructor: explicit ids and times, attributes of every OTel
type (arrays included), events, links, status, resource and scope. No tracer, no processor.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
SECRET = "sk-let-me-in-0123456789abcdef"  # an API key sent as a header: must never leak

RESOURCE = Resource(
    {
        "service.name": "letta",
        "service.version": "0.16.8",
        "deployment.environment.name": "test",
    }
)
SCOPE = InstrumentationScope(
    "letta-otel-exporter", "0.1.0", "https://opentelemetry.io/schemas/1.37.0"
)


def trace_id(n: int) -> int:
    return 0x0AF7651916CD43DD8448EB211C80319C + n


def span_id(n: int) -> int:
    return 0xB7AD6B7169203331 + n


def attributes(n: int) -> dict[str, Any]:
    """Every attribute type OTel allows."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 100 + n,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.stream": False,
        "gen_ai.response.finish_reasons": ("stop", "tool_calls"),
        "letta.step.token_ids": (1, 2, 3),
        "letta.step.scores": (0.5, 1.5),
        "letta.step.flags": (True, False),
        "letta.step.index": n,
    }


def make_span(
    n: int = 0, *, trace: int | None = None, parent: int | None = None, error: bool = False
) -> ReadableSpan:
    """Span number ``n``, in trace ``trace`` (default: its own), child of span ``parent``."""
    trace = trace if trace is not None else trace_id(n)
    context = SpanContext(trace, span_id(n), is_remote=False, trace_flags=TraceFlags(1))
    parent_context = (
        SpanContext(trace, span_id(parent), is_remote=False, trace_flags=TraceFlags(1))
        if parent is not None
        else None
    )
    start = BASE_NS + n * 1_000_000_000
    return ReadableSpan(
        name="chat gpt-4o-mini",
        context=context,
        parent=parent_context,
        resource=RESOURCE,
        attributes=attributes(n),
        events=(
            Event(
                "gen_ai.choice",
                {"gen_ai.response.finish_reasons": ("stop",), "index": 0},
                timestamp=start + 500_000_000,
            ),
        ),
        links=(
            Link(
                SpanContext(trace_id(999), span_id(999), is_remote=True),
                {"letta.link": "server trace"},
            ),
        ),
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.ERROR, "rate limited") if error else Status(StatusCode.OK),
        start_time=start,
        end_time=start + 1_234_567_890,
        instrumentation_scope=SCOPE,
    )


def make_batch(count: int = 5, *, first: int = 0) -> list[ReadableSpan]:
    """A root span ``first`` and ``count - 1`` children in its trace."""
    root = make_span(first)
    return [root] + [
        make_span(n, trace=trace_id(first), parent=first) for n in range(first + 1, first + count)
    ]


def ids(spans: list[ReadableSpan]) -> set[tuple[str, str]]:
    """``(trace_id, span_id)`` hex pairs, as the receiver reports them."""
    return {
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")  # type: ignore[union-attr]
        for s in spans
    }
