"""Settings -> the narrower objects each stage takes, in one place for the CLI and the tests.

This is the only module (with the CLI) that reads :class:`~exporter.settings.Settings`: the
source, the sink, the converter and the worker take plain arguments, so each can be built and
tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter

from .checkpoint import Checkpoint, stream_key
from .convert import ConvertOptions, build_resource
from .settings import Settings
from .shipping import ExportSummary, Shipper
from .sink import (
    ConsoleExporter,
    DeliveringExporter,
    OtlpGrpcExporter,
    OtlpHttpExporter,
    OtlpJsonFileExporter,
)
from .source import USER_AGENT, ApiSource, LettaClient, RetryPolicy, StepFilter
from .source._transport import LeanTransport, lean_transport_applies
from .telemetry import DeadLetter, Metrics
from .worker import Worker, WorkerOptions

_logger = logging.getLogger(__name__)

__all__ = [
    "build_exporter",
    "build_shipper",
    "build_worker",
    "convert_options",
    "letta_client",
    "resource",
    "sink_target",
    "step_filter",
    "stream",
    "worker_options",
]


def letta_client(settings: Settings, *, stop: asyncio.Event | None = None) -> LettaClient:
    """Build the client and its httpx pool from the settings.

    Sends ``Authorization: Bearer <key>`` only when a key is set, ``X-Project-Id`` and the
    ``user_id`` header when set, a ``User-Agent`` naming this exporter, and keeps up to
    ``concurrency`` connections alive for reuse. Requests go through the lean keep-alive
    transport (a third of httpcore's CPU per request) unless a proxy is configured.
    """
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if settings.letta_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.letta_api_key.get_secret_value()}"
    if settings.project_id:
        headers["X-Project-Id"] = settings.project_id
    if settings.letta_user_id:
        headers["user_id"] = settings.letta_user_id
    lean = (
        LeanTransport(max_keepalive=settings.concurrency)
        if lean_transport_applies(settings.letta_base_url)
        else None
    )
    http = httpx.AsyncClient(
        base_url=settings.letta_base_url,
        headers=headers,
        timeout=httpx.Timeout(settings.request_timeout_seconds),
        limits=httpx.Limits(
            max_connections=settings.concurrency,
            max_keepalive_connections=settings.concurrency,
        ),
        transport=lean,
    )
    return LettaClient(
        http,
        retry=RetryPolicy(
            max_retries=settings.max_retries,
            initial_backoff=settings.retry_backoff_initial_seconds,
            max_backoff=settings.retry_backoff_max_seconds,
        ),
        concurrency=settings.concurrency,
        page_size=settings.page_size,
        discovery=settings.discovery,
        stop=stop,
        lean=lean,
    )


def build_exporter(settings: Settings) -> DeliveringExporter:
    """The exporter ``settings.effective_sink`` and ``otlp_protocol`` ask for.

    Logs one INFO line naming the sink and where it sends (never the headers' values).

    Raises:
        ConfigError: a bad endpoint, header name or TLS file.
        SinkError: the output file cannot be opened.
    """
    sink = settings.effective_sink
    exporter: DeliveringExporter
    if sink == "console":
        exporter = ConsoleExporter()
        _logger.info("sink: console (one line per span on stdout)")
        return exporter
    if sink == "file":
        exporter = OtlpJsonFileExporter(settings.output)
        _logger.info("sink: OTLP JSON lines to %s", exporter.target)
        return exporter
    headers = settings.otlp_header_dict()
    timeout = settings.otlp_timeout_ms / 1000
    if settings.otlp_protocol == "grpc":
        exporter = OtlpGrpcExporter(
            endpoint=settings.otlp_traces_url,
            headers=headers,
            compression=settings.otlp_compression,
            timeout=timeout,
            insecure=settings.otlp_insecure,
            certificate_file=settings.otlp_certificate,
            client_key_file=settings.otlp_client_key,
            client_certificate_file=settings.otlp_client_certificate,
        )
        protocol = "gRPC"
    else:
        exporter = OtlpHttpExporter(
            endpoint=settings.otlp_traces_url,
            headers=headers,
            compression=settings.otlp_compression,
            timeout=timeout,
            certificate_file=settings.otlp_certificate,
            client_key_file=settings.otlp_client_key,
            client_certificate_file=settings.otlp_client_certificate,
        )
        protocol = "HTTP/protobuf"
    _logger.info(
        "sink: OTLP %s to %s (compression %s, timeout %gs, %d header(s))",
        protocol,
        exporter.target,
        settings.otlp_compression,
        timeout,
        len(headers),
    )
    return exporter


def convert_options(settings: Settings) -> ConvertOptions:
    """The content policy and id options."""
    return ConvertOptions(
        content=settings.content,
        content_max_bytes=settings.content_max_bytes,
        redact_patterns=tuple(settings.redact_patterns),
        join_letta_traces=settings.join_letta_traces,
    )


def resource(settings: Settings) -> Resource:
    """service.name and OTEL_RESOURCE_ATTRIBUTES as an OTel resource."""
    return build_resource(settings.service_name, settings.resource_attribute_dict())


def step_filter(settings: Settings, *, until_now: bool) -> StepFilter:
    """Which steps to export; a one-shot job without ``until`` stops at its start time."""
    until = settings.until
    if until is None and until_now:
        until = datetime.now(UTC)
    return StepFilter(
        since=settings.since,
        until=until,
        agent_ids=tuple(settings.agent_ids),
        model=settings.model,
        project_id=settings.project_id,
    )


def stream(settings: Settings, *, window: bool) -> str:
    """The checkpoint stream of this filter set.

    The sidecar's stream ignores ``since``/``until`` (they only bound its first start, and a
    relative ``since`` changes at every start); a one-shot job's window is part of its key (a
    relative one as written, ``since=2h``), so re-running the same command resumes it.
    """
    parts: dict[str, Any] = {
        "letta": settings.letta_base_url.rstrip("/"),
        "agents": sorted(settings.agent_ids),
        "model": settings.model,
        "project": settings.project_id,
        "shard": settings.shard,
    }
    if window:
        # A relative since (24h) keys on its words: the same command resumes its stream.
        since = settings.since_spec or (settings.since.isoformat() if settings.since else None)
        parts["since"] = since
        until = settings.until_spec or (settings.until.isoformat() if settings.until else None)
        parts["until"] = until
    return stream_key(**parts)


def worker_options(settings: Settings, *, one_shot: bool) -> WorkerOptions:
    """Batching, concurrency and limit options for the sidecar (``one_shot=False``) or the job."""
    return WorkerOptions(
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        trace_settle_seconds=settings.trace_settle_seconds,
        limit=settings.limit if one_shot else None,
        shard=settings.shard_spec,
    )


def sink_target(settings: Settings) -> str:
    """Where spans go, for logs and summaries (never with headers)."""
    sink = settings.effective_sink
    if sink == "otlp":
        return f"OTLP {settings.otlp_protocol} {settings.otlp_traces_url}"
    if sink == "file":
        return f"OTLP JSON file {settings.output}"
    return "console"


def build_shipper(
    settings: Settings,
    *,
    exporter: SpanExporter,
    stop: asyncio.Event,
    metrics: Metrics,
    dead_letter: DeadLetter,
    deadline_seconds: float | None,
    dry_run: bool = False,
) -> Shipper:
    """The one retry layer of the collector hop, for every command that ships spans.

    Args:
        deadline_seconds: None retries forever (the sidecar); else the one-shot deadline
            (``0`` gives up after the first failure: an offline conversion).
    """
    return Shipper(
        exporter=exporter,
        metrics=metrics,
        dead_letter=dead_letter,
        stop=stop,
        deadline_seconds=deadline_seconds,
        retry_initial_seconds=min(1.0, settings.retry_backoff_initial_seconds * 2),
        retry_max_seconds=settings.retry_backoff_max_seconds,
        dry_run=dry_run,
        max_bytes=settings.batch_max_bytes,
    )


def build_worker(
    settings: Settings,
    *,
    client: LettaClient,
    exporter: SpanExporter,
    stop: asyncio.Event,
    one_shot: bool,
    dry_run: bool = False,
    metrics: Metrics | None = None,
    on_progress: Callable[[ExportSummary], None] | None = None,
    dead_letter: DeadLetter | None = None,
    clock: Callable[[], float] = time.time,
) -> Worker:
    """A worker over the Letta API source, for the sidecar or the one-shot job.

    A dry run gets a checkpoint that is never saved: it sends nothing, so it must not move the
    cursor of the real export that follows.
    """
    metrics = metrics or Metrics()
    dead_letter = dead_letter or DeadLetter(settings.dead_letter_path)
    shipper = build_shipper(
        settings,
        exporter=exporter,
        stop=stop,
        metrics=metrics,
        dead_letter=dead_letter,
        deadline_seconds=settings.export_deadline_seconds if one_shot else None,
        dry_run=dry_run,
    )
    checkpoint = (_UnsavedCheckpoint if dry_run else Checkpoint)(settings.state_path)
    key = stream(settings, window=one_shot)
    options = worker_options(settings, one_shot=one_shot)
    source = ApiSource(
        client,
        state=checkpoint.stream(key),
        stream=key,
        filt=step_filter(settings, until_now=one_shot),
        stop=stop,
        shard=options.shard,
        concurrency=options.concurrency,
        trace_settle_seconds=options.trace_settle_seconds,
        limit=options.limit,
        poll_seconds=settings.poll_interval_seconds,
        clock=clock,
    )
    return Worker(
        source=source,
        shipper=shipper,
        checkpoint=checkpoint,
        convert_options=convert_options(settings),
        resource=resource(settings),
        options=options,
        metrics=metrics,
        dead_letter=dead_letter,
        stop=stop,
        runs=source.lookups,
        run_idle_seconds=None,  # Letta says when a run is over
        on_progress=on_progress,
        clock=clock,
    )


class _UnsavedCheckpoint(Checkpoint):
    """The saved state, read but never written (dry runs)."""

    def save(self) -> None:
        return
