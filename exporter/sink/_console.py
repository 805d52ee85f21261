"""A human-readable line per span, for trying the exporter out without a collector."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from ._base import DEFAULT_LOG_INTERVAL, DeliveringExporter, Delivery

__all__ = ["ConsoleExporter", "format_span"]

#: Shown label -> attributes tried in order (current semantic conventions first).
_KEY_ATTRIBUTES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("provider", ("gen_ai.provider.name", "gen_ai.system")),
    ("model", ("gen_ai.response.model", "gen_ai.request.model")),
    ("in", ("gen_ai.usage.input_tokens",)),
    ("out", ("gen_ai.usage.output_tokens",)),
    ("finish", ("gen_ai.response.finish_reasons",)),
    ("agent", ("gen_ai.agent.name", "gen_ai.agent.id")),
    ("error", ("error.type",)),
)


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def format_span(span: ReadableSpan) -> str:
    """One line: start time, duration, ids, name, key GenAI attributes and status."""
    start = span.start_time
    when = (
        datetime.fromtimestamp(start / 1e9, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        if start is not None
        else "-"
    )
    duration = (
        f"{(span.end_time - start) / 1e6:.1f}ms"
        if start is not None and span.end_time is not None
        else "-"
    )
    context = span.context
    ids = (
        f"trace={context.trace_id:032x} span={context.span_id:016x}"
        if context is not None
        else "trace=- span=-"
    )
    attributes = span.attributes or {}
    shown = []
    for label, names in _KEY_ATTRIBUTES:
        for name in names:
            if name in attributes:
                shown.append(f"{label}={_text(attributes[name])}")
                break
    status = span.status
    if status.status_code is StatusCode.ERROR:
        state = f"status=ERROR{': ' + status.description if status.description else ''}"
    else:
        state = f"status={status.status_code.name}"
    return "  ".join(
        part for part in (when, duration, ids, span.name, " ".join(shown), state) if part
    )


class ConsoleExporter(DeliveringExporter):
    """Writes :func:`format_span` lines, one per span.

    Args:
        stream: where to write; ``None`` means the current ``sys.stdout`` at each write.
        log_interval: seconds during which an identical failure is logged once.
    """

    def __init__(
        self, *, stream: TextIO | None = None, log_interval: float = DEFAULT_LOG_INTERVAL
    ) -> None:
        super().__init__(
            target=str(getattr(stream, "name", "stream")) if stream is not None else "stdout",
            log_interval=log_interval,
        )
        self._stream = stream
        self._lock = threading.Lock()

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        text = "".join(format_span(span) + "\n" for span in spans)
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            with self._lock:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream is closed
            return Delivery(delivered=False, message=f"{self.target}: write failed: {exc}")
        return Delivery(delivered=True)
