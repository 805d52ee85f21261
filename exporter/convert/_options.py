"""What the caller tells the converter: the content policy and what it knows beside the trace."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from exporter.models import Agent, Run, Step, StepMetrics

from ._prices import PriceTable

__all__ = ["ContentPolicy", "ConvertOptions", "TraceContext"]

ContentPolicy = Literal["none", "full", "raw"]

DEFAULT_CONTENT_MAX_BYTES: Final = 16384
# Below this an attribute cannot hold even a truncated JSON document with its marker.
MIN_CONTENT_MAX_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """How much of a provider call's content goes on the span.

    Attributes:
        content: ``none`` (default): no prompt or completion text at all; ``full``: the GenAI
            content attributes (``gen_ai.input.messages`` ...) in the conventions' JSON schema;
            ``raw``: the request and response bodies verbatim as JSON strings.
        content_max_bytes: the largest value, in UTF-8 bytes, of any one string attribute.
            Longer values are truncated (JSON ones stay valid JSON) and named in
            ``letta.content.truncated``. Values under 64 are read as 64.
        redact_patterns: regular expressions; every match in a string attribute is replaced by
            ``[REDACTED]`` before truncation. Invalid patterns are the caller's to reject
            (settings validate them); here they are skipped, never raised.
        join_letta_traces: when the Step carries the Letta server's own OTel ``trace_id``, put the
            LLM span in that trace (as a root there, linked to the run span) instead of the run's.
        prices: the user's price table (:func:`~exporter.convert.parse_prices`), consulted
            before the price library; ``None``: the library's prices only.
    """

    content: ContentPolicy = "none"
    content_max_bytes: int = DEFAULT_CONTENT_MAX_BYTES
    redact_patterns: tuple[str, ...] = ()
    join_letta_traces: bool = False
    prices: PriceTable | None = None

    @property
    def max_bytes(self) -> int:
        """The effective per-attribute limit (never below the floor a JSON marker needs)."""
        return max(self.content_max_bytes, MIN_CONTENT_MAX_BYTES)

    @property
    def redactors(self) -> tuple[re.Pattern[str], ...]:
        """The redaction patterns, compiled once per distinct tuple; invalid ones left out."""
        return _compile(self.redact_patterns)


@lru_cache(maxsize=32)
def _compile(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError):
            continue
    return tuple(compiled)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """What the worker knows beside the trace; every part is optional.

    Attributes:
        step: the step the trace belongs to (status, tokens, Letta's own trace id).
        metrics: the step's metrics (the LLM call's duration on self-hosted servers).
        run: the run (conversation id, and the run id when the trace lacks one).
        agent: the agent (its name).
    """

    step: Step | None = None
    metrics: StepMetrics | None = None
    run: Run | None = None
    agent: Agent | None = None
