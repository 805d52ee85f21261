"""What a run span needs to know about the run's LLM calls, gathered one call at a time.

The worker (or the file export) sees a run's calls one by one, possibly across passes, and builds
the run's ``invoke_agent`` span later. :func:`summarize_call` reads one call (its trace and the
span :func:`~._spans.convert_trace` made of it) into a :class:`RunSummary`; summaries merge
(:meth:`RunSummary.merge`, order-independent: the earliest call gives the run's input, the latest
its answer and its last error), and :func:`~._spans.convert_run` takes the result. Every field is
a plain value, so a summary can be kept in a checkpoint (``dataclasses.asdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from exporter.models import ProviderTrace

from . import _semconv as sc
from ._attributes import SpanAttributes
from ._content import answer_text, user_input_text
from ._options import ConvertOptions
from ._sanitize import Cleaner
from ._shapes import request_shape, response_shape

__all__ = ["RunSummary", "summarize_call"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The run-level facts of a run's calls (all optional; the empty summary says nothing).

    Attributes:
        input_text: the user input of the run's earliest agent call (content ``full``/``raw``).
        input_at_ns: that call's start, to keep the earliest one when merging.
        output_text: the answer of the run's latest agent call (content ``full``/``raw``).
        output_at_ns: that call's end, to keep the latest one.
        calls: how many calls were summarized.
        failed_calls: how many of them failed.
        last_at_ns: the end of the latest call.
        last_failed: whether the latest call failed.
        last_error_type: its ``error.type`` when it failed.
        last_error_message: its status description when it failed.
        agent_id: the agent the calls name.
        provider: the latest call's ``gen_ai.provider.name``.
        model: the latest call's ``gen_ai.request.model``.
        user_id: the Letta user the calls name.
    """

    input_text: str | None = None
    input_at_ns: int | None = None
    output_text: str | None = None
    output_at_ns: int | None = None
    calls: int = 0
    failed_calls: int = 0
    last_at_ns: int | None = None
    last_failed: bool = False
    last_error_type: str | None = None
    last_error_message: str | None = None
    agent_id: str | None = None
    provider: str | None = None
    model: str | None = None
    user_id: str | None = None

    def merge(self, other: RunSummary) -> RunSummary:
        """Both summaries as one (commutative up to ties in time)."""
        first_input = _earlier(self.input_at_ns, other.input_at_ns)
        last_output = _later(self.output_at_ns, other.output_at_ns)
        latest = self if _later(self.last_at_ns, other.last_at_ns) == 0 else other
        earliest_input = self if first_input == 0 else other
        latest_output = self if last_output == 0 else other
        return replace(
            latest,
            input_text=earliest_input.input_text,
            input_at_ns=earliest_input.input_at_ns,
            output_text=latest_output.output_text,
            output_at_ns=latest_output.output_at_ns,
            calls=self.calls + other.calls,
            failed_calls=self.failed_calls + other.failed_calls,
            agent_id=latest.agent_id or self.agent_id or other.agent_id,
            provider=latest.provider or self.provider or other.provider,
            model=latest.model or self.model or other.model,
            user_id=latest.user_id or self.user_id or other.user_id,
        )


def _earlier(a: int | None, b: int | None) -> int:
    """0 when ``a`` is the earlier known time (or ``b`` is unknown), else 1."""
    if a is None:
        return 1 if b is not None else 0
    return 0 if b is None or a <= b else 1


def _later(a: int | None, b: int | None) -> int:
    """0 when ``a`` is the later known time (or ``b`` is unknown), else 1."""
    if a is None:
        return 1 if b is not None else 0
    return 0 if b is None or a >= b else 1


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def summarize_call(trace: ProviderTrace, span: ReadableSpan, options: ConvertOptions) -> RunSummary:
    """One call's contribution to its run's summary.

    Args:
        trace: the provider trace.
        span: what ``convert_trace`` made of it (with the same options).
        options: the content policy (no text is kept under ``none``), size limit and redaction.
    """
    attrs = span.attributes or {}
    failed = span.status.status_code is StatusCode.ERROR
    summary = RunSummary(
        calls=1,
        failed_calls=int(failed),
        last_at_ns=span.end_time,
        last_failed=failed,
        last_error_type=_str(attrs.get(sc.ERROR_TYPE)) if failed else None,
        last_error_message=span.status.description if failed else None,
        agent_id=_str(attrs.get(sc.GEN_AI_AGENT_ID)),
        provider=_str(attrs.get(sc.GEN_AI_PROVIDER_NAME)),
        model=_str(attrs.get(sc.GEN_AI_REQUEST_MODEL)),
        user_id=_str(attrs.get(sc.USER_ID)),
    )
    if options.content == "none" or trace.call_type == sc.CALL_TYPE_SUMMARIZATION:
        return summary
    out = SpanAttributes(options.redactors, options.max_bytes)
    cleaner = Cleaner(options.redactors)
    request = trace.request_json if isinstance(trace.request_json, dict) else {}
    response = trace.response_json if isinstance(trace.response_json, dict) else {}
    resp_shape = response_shape(response)
    said = user_input_text(request, request_shape(request, resp_shape), cleaner, out)
    answer = None if failed else answer_text(response, resp_shape, cleaner, out)
    return replace(
        summary,
        input_text=out.fit_text(said) if said else None,
        input_at_ns=span.start_time if said else None,
        output_text=out.fit_text(answer) if answer else None,
        output_at_ns=span.end_time if answer else None,
    )
