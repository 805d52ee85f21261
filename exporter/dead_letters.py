"""Re-sending a dead-letter file: what can be sent again goes to the collector, the rest stays.

The dead-letter file is JSON lines (``telemetry.DeadLetter``). Two kinds of entries can be sent
again:

* a refused batch (``refused``, ``too_large``) carries the request it was as ``otlp_json``: it is
  parsed back into the ``ExportTraceServiceRequest`` and sent as it was (same span ids, so a
  backend that got it after all sees a duplicate, not a second span);
* a record that could not be read (``invalid``, ``unreadable``) and carries its ``raw`` bytes is
  parsed and converted again; it is sent when it reads now (a fixed parser, a raised limit).

Everything else (a step with no trace, a record still unreadable, a batch the collector refuses
again as data) is kept and reported. Each entry is removed from the file as soon as the collector
accepted it (the file is rewritten beside itself and renamed over it, fsynced), so a replay can
be stopped or killed at any moment: what was delivered is gone from the file, what was not is
still there, and only the entry in flight at a crash is sent twice. A second replay of the same
file sends nothing that the first one delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.resources import Resource

from ._retry import backoff_delay, wait_or_stop
from .convert import ConvertOptions, TraceContext, convert_trace
from .errors import DeliveryBlockedError, RecordInvalidError, UndeliveredError
from .models import ProviderTrace, parse_record
from .settings import Settings
from .sink import DeliveringExporter, Delivery, otlp_json_to_request
from .sink._encode import SpanEncoder

__all__ = ["ReplayReport", "replay_dead_letters"]

_logger = logging.getLogger(__name__)

#: Tries a configuration failure gets before the replay stops naming it.
_CONFIG_ATTEMPTS: Final = 3
_RECORD_REASONS: Final = frozenset({"invalid", "unreadable"})


@dataclass(slots=True)
class ReplayReport:
    """What a replay did; printed by the CLI.

    Attributes:
        entries: lines in the file when the replay began.
        delivered: entries the collector accepted (removed from the file).
        spans: spans in those entries.
        kept: entries left in the file, each with why.
        error: why the replay stopped early (the collector unreachable or refusing the setup).
    """

    entries: int = 0
    delivered: int = 0
    spans: int = 0
    kept: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "delivered": self.delivered,
            "spans": self.spans,
            "kept": len(self.kept),
            "kept_entries": self.kept[:100],
            "error": self.error,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class _Request:
    body: bytes
    spans: int


async def replay_dead_letters(
    path: Path,
    *,
    exporter: DeliveringExporter,
    convert_options: ConvertOptions,
    resource: Resource,
    stop: asyncio.Event,
    deadline_seconds: float = 120.0,
    retry_initial_seconds: float = 0.5,
    retry_max_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayReport:
    """Send again what ``path`` holds that can be sent, removing each entry once delivered.

    Args:
        path: the dead-letter file.
        exporter: where to send (an OTLP exporter).
        convert_options: for records converted again from their raw bytes.
        resource: the resource of those spans.
        stop: shutdown: the replay ends after the entry in flight.
        deadline_seconds: how long one entry is retried while the collector fails transiently.
        retry_initial_seconds: the first backoff.
        retry_max_seconds: the longest backoff.
        clock: monotonic seconds (tests pass a fake).

    Returns:
        What was delivered and what was kept, and why.
    """
    lines = _read_lines(path)
    report = ReplayReport(entries=len(lines))
    encoder = SpanEncoder()
    remaining = list(lines)
    index = 0
    while index < len(remaining) and not stop.is_set():
        line = remaining[index]
        request, why = _request_of(line, encoder, convert_options, resource)
        if request is None:
            report.kept.append(why)
            index += 1
            continue
        try:
            delivery = await _send(
                exporter,
                request,
                stop=stop,
                deadline=deadline_seconds,
                initial=retry_initial_seconds,
                maximum=retry_max_seconds,
                clock=clock,
            )
        except UndeliveredError as exc:
            report.error = str(exc)
            break
        if delivery is None:  # stopped
            break
        if not delivery.delivered:
            why["kept"] = f"the collector refused it again: {delivery.message}"
            report.kept.append(why)
            index += 1
            continue
        del remaining[index]
        _rewrite(path, remaining, previous=lines)
        lines = list(remaining)
        report.delivered += 1
        report.spans += request.spans
    return report


def _read_lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def _request_of(
    line: str, encoder: SpanEncoder, options: ConvertOptions, resource: Resource
) -> tuple[_Request | None, dict[str, str]]:
    """The request to send for one line, or None and the reason it stays."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None, {"reason": "?", "kept": "not a JSON line"}
    if not isinstance(entry, dict):
        return None, {"reason": "?", "kept": "not a JSON object"}
    reason = str(entry.get("reason", "?"))
    name = _name(entry)
    why = {"reason": reason, "id": name}
    otlp = entry.get("otlp_json")
    if isinstance(otlp, str):
        try:
            message = otlp_json_to_request(otlp)
        except ValueError as exc:
            why["kept"] = f"its otlp_json cannot be read: {exc}"
            return None, why
        count = sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        return _Request(message.SerializeToString(), count), why
    raw = entry.get("raw")
    if reason in _RECORD_REASONS and isinstance(raw, str):
        try:
            trace = parse_record(ProviderTrace, raw)
        except (RecordInvalidError, ValueError) as exc:
            why["kept"] = f"still not a readable record: {exc}"
            return None, why
        span = convert_trace(trace, TraceContext(), options=options, resource=resource)
        return _Request(encoder.encode([span]), 1), why
    why["kept"] = (
        "nothing to re-send (no trace was ever written for this step)"
        if reason == "no_trace"
        else "nothing to re-send (the entry holds no spans and no raw record)"
    )
    return None, why


def _name(entry: dict[str, Any]) -> str:
    for key in ("step_id", "record_id", "trace_id"):
        if isinstance(entry.get(key), str):
            return str(entry[key])
    ids = entry.get("ids")
    if isinstance(ids, list) and ids:
        return f"{ids[0]} (+{len(ids) - 1})" if len(ids) > 1 else str(ids[0])
    return "?"


async def _send(
    exporter: DeliveringExporter,
    request: _Request,
    *,
    stop: asyncio.Event,
    deadline: float,
    initial: float,
    maximum: float,
    clock: Callable[[], float],
) -> Delivery | None:
    """Send one request until accepted or refused as data; None when stopped.

    Raises:
        DeliveryBlockedError: the collector refuses the setup (a few tries).
        UndeliveredError: the collector kept failing until the deadline.
    """
    started = clock()
    attempt = 0
    refusals = 0
    while True:
        delivery = await asyncio.to_thread(
            exporter.deliver_request, request.body, span_count=request.spans
        )
        if delivery.delivered or delivery.kind in ("data", "too_large"):
            return delivery
        if delivery.kind == "configuration":
            refusals += 1
            if refusals >= _CONFIG_ATTEMPTS:
                raise DeliveryBlockedError([], delivery.message)
        elif clock() - started >= deadline:
            raise UndeliveredError([], delivery.message or "export failed")
        wait = backoff_delay(
            attempt,
            initial=initial,
            maximum=maximum,
            retry_after=delivery.retry_after,
            retry_after_cap=maximum * 4,
            jitter=random.uniform,
        )
        attempt += 1
        if await wait_or_stop(stop, wait):
            return None


def _rewrite(path: Path, lines: list[str], *, previous: list[str]) -> None:
    """The file with ``lines`` only, replaced atomically; lines appended meanwhile (a running
    exporter writing to it) are kept."""
    appended = _read_lines(path)[len(previous) :] if path.exists() else []
    temporary = path.with_name(path.name + ".replay-tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for line in [*lines, *appended]:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    lines.extend(appended)


def replay_command(settings: Settings, path: Path) -> tuple[dict[str, Any], int]:
    """``letta-otel-exporter replay FILE``: the report (as printed) and the exit code.

    Exit codes: 0 every entry was delivered (the file is empty), 1 entries were kept (named in
    the report) or the collector could not be reached, 2 (``ConfigError``) no OTLP sink or no
    such file.

    Raises:
        ConfigError: the sink is not OTLP, or the file does not exist.
    """
    from . import wiring
    from .errors import ConfigError

    if settings.effective_sink != "otlp":
        raise ConfigError(
            "sink", "replay sends to a collector: set an OTLP endpoint (--otlp-endpoint)"
        )
    if not path.is_file():
        raise ConfigError("FILE", f"no dead-letter file at {path}")
    exporter = wiring.build_exporter(settings)
    stop = asyncio.Event()

    async def main() -> ReplayReport:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await replay_dead_letters(
            path,
            exporter=exporter,
            convert_options=wiring.convert_options(settings),
            resource=wiring.resource(settings),
            stop=stop,
            deadline_seconds=settings.export_deadline_seconds,
            retry_initial_seconds=min(1.0, settings.retry_backoff_initial_seconds * 2),
            retry_max_seconds=settings.retry_backoff_max_seconds,
        )

    try:
        report = asyncio.run(main())
    finally:
        exporter.shutdown()
    data = report.as_dict() | {"file": str(path), "interrupted": stop.is_set()}
    for kept in report.kept[:20]:
        _logger.warning(
            "kept in the file: %s entry %s: %s", kept["reason"], kept.get("id", "?"), kept["kept"]
        )
    return data, 0 if report.ok else 1
