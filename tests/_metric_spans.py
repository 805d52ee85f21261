"""LLM spans with hand-chosen values for the GenAI metrics tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
RESOURCE = Resource({"service.name": "letta"})


def call_span(
    n: int,
    *,
    seconds: float = 1.5,
    operation: str = "chat",
    extra: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> ReadableSpan:
    """Call ``n``: openai gpt-4o-mini, 100 + n input and 7 output tokens, ``seconds`` long."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "server.address": "api.openai.com",
        "gen_ai.usage.input_tokens": 100 + n,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.agent.name": "demo",
        "gen_ai.agent.id": "agent-1",
        "letta.step.id": f"step-{n}",
        **(extra or {}),
    }
    for name in drop:
        attributes.pop(name, None)
    start = BASE_NS + n * 10_000_000_000
    return ReadableSpan(
        name=f"{operation} gpt-4o-mini",
        context=SpanContext(trace_of(n), span_of(n), is_remote=False, trace_flags=TraceFlags(1)),
        resource=RESOURCE,
        attributes=attributes,
        kind=SpanKind.CLIENT,
        start_time=start,
        end_time=start + round(seconds * 1e9),
    )


def trace_of(n: int) -> int:
    return 0x5B8EFFF798038103D269B633813FC60C + n


def span_of(n: int) -> int:
    return 0xEEE19B7EC3C1B174 + n
