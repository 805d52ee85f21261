"""Settings -> the narrower objects each stage takes, in one place for the CLI and the tests.

This is the only module (with the CLI) that reads :class:`~exporter.settings.Settings`: the
source, the sink, the converter and the worker take plain arguments, so each can be built and
tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from .batch import Batch
from .checkpoint import Checkpoint, StreamState, stream_key
from .convert import ConvertOptions, build_resource
from .delivered import DeliveredTraces, SkipDelivered, delivered_path
from .errors import ConfigError
from .genai_metrics import GenAIMetrics
from .journal import JournalOptions
from .prices import load_price_table
from .run_tracking import RunContext
from .settings import Settings
from .shipping import ExportSummary, Shipper
from .sidecar import SocketDelivered, SocketSidecar, WorkerTask, watch_journal
from .sink import (
    ConsoleExporter,
    DeliveringExporter,
    OtlpGrpcExporter,
    OtlpHttpExporter,
    OtlpJsonFileExporter,
)
from .sink._tls import TlsFiles
from .source import (
    USER_AGENT,
    ApiSource,
    EnrichingSource,
    LettaClient,
    ListenerOptions,
    RetryPolicy,
    SocketSource,
    SocketStats,
    Source,
    StepEnricher,
    StepFilter,
)
from .source._transport import LeanTransport, lean_transport_applies
from .telemetry import DeadLetter, Metrics
from .worker import Worker, WorkerOptions

if TYPE_CHECKING:  # psycopg is imported only when the database source is used
    from .source._postgres import PostgresOptions, PostgresSource

_logger = logging.getLogger(__name__)

__all__ = [
    "api_configured",
    "build_exporter",
    "build_shipper",
    "build_worker",
    "convert_options",
    "delivered_hook",
    "genai_metrics",
    "letta_client",
    "postgres_options",
    "postgres_run_source",
    "postgres_source",
    "reconcile_poll_seconds",
    "resource",
    "sink_target",
    "socket_sidecar",
    "socket_source",
    "source_worker",
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
    """The content policy, id options and the user's prices.

    Raises:
        ConfigError: the price file can no longer be read (it was checked at load).
    """
    return ConvertOptions(
        content=settings.content,
        content_max_bytes=settings.content_max_bytes,
        redact_patterns=tuple(settings.redact_patterns),
        join_letta_traces=settings.join_letta_traces,
        prices=load_price_table(settings.prices_file) if settings.prices_file else None,
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
    genai: GenAIMetrics | None = None,
) -> Shipper:
    """The one retry layer of the collector hop, for every command that ships spans.

    Args:
        deadline_seconds: None retries forever (the sidecar); else the one-shot deadline
            (``0`` gives up after the first failure: an offline conversion).
        genai: the GenAI metrics (:func:`genai_metrics`), told of every delivered batch.
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
        on_delivered=delivered_hook(genai),
        max_bytes=settings.batch_max_bytes,
    )


def delivered_hook(
    genai: GenAIMetrics | None,
) -> Callable[[Sequence[ReadableSpan]], Awaitable[None]] | None:
    """The shipper's ``on_delivered`` for the GenAI metrics: each accepted batch recorded off
    the event loop (the metrics export and the ledger's fsync block), before the checkpoint
    moves past it. ``None`` without metrics."""
    if genai is None:
        return None
    metrics = genai

    async def record(spans: Sequence[ReadableSpan]) -> None:
        await asyncio.to_thread(metrics.record_delivered, spans)

    return record


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
    genai: GenAIMetrics | None = None,
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
        genai=genai,
    )
    checkpoint = (_UnsavedCheckpoint if dry_run else Checkpoint)(settings.state_path)
    options = worker_options(settings, one_shot=one_shot)
    source = _api_source(
        settings,
        client,
        checkpoint,
        one_shot=one_shot,
        stop=stop,
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


def _api_source(
    settings: Settings,
    client: LettaClient,
    checkpoint: Checkpoint,
    *,
    one_shot: bool,
    stop: asyncio.Event,
    poll_seconds: float,
    clock: Callable[[], float],
) -> ApiSource:
    """The Letta API as a source, on its checkpoint stream (the one-shot job's keyed on its
    window, and with its limit)."""
    key = stream(settings, window=one_shot)
    return ApiSource(
        client,
        state=checkpoint.stream(key),
        stream=key,
        filt=step_filter(settings, until_now=one_shot),
        stop=stop,
        shard=settings.shard_spec,
        concurrency=settings.concurrency,
        trace_settle_seconds=settings.trace_settle_seconds,
        limit=settings.limit if one_shot else None,
        poll_seconds=poll_seconds,
        clock=clock,
    )


class _UnsavedCheckpoint(Checkpoint):
    """The saved state, read but never written (dry runs)."""

    def save(self) -> None:
        return


#: The idle rule of the socket worker: a run with no trace for this long gets its parent span
#: (the socket says nothing about a run's end; with the API its status is asked too).
SOCKET_RUN_IDLE_SECONDS: Final = 60.0


def source_worker(
    settings: Settings,
    *,
    source: Source,
    exporter: SpanExporter,
    stop: asyncio.Event,
    one_shot: bool,
    metrics: Metrics,
    dead_letter: DeadLetter,
    dry_run: bool = False,
    runs: RunContext | None = None,
    run_idle_seconds: float | None = None,
    on_progress: Callable[[ExportSummary], None] | None = None,
    on_accepted: Callable[[Batch], Awaitable[None]] | None = None,
    after_delivery: Callable[[Batch, StreamState], Awaitable[None]] | None = None,
    owns_run: Callable[[str], bool] | None = None,
    runs_by_shard: bool = True,
    drain_on_stop: bool = False,
    clock: Callable[[], float] = time.time,
    genai: GenAIMetrics | None = None,
) -> Worker:
    """A worker over any source, with its own shipper and checkpoint (one per stream: several
    workers in one process each save only their own stream).

    ``runs_by_shard=False``: with ``--shard``, ship the parent span of every run this shard saw
    a trace of, not only of the runs whose id hashes to it. For a source that never tells a
    shard about the other shards' records (the database reads only its shard's rows), the
    shard a run hashes to may see none of its traces; a run split between shards then gets its
    parent span from each (the same span id: a backend keeps one) rather than from none.
    """
    options = replace(worker_options(settings, one_shot=one_shot), drain_on_stop=drain_on_stop)
    if not runs_by_shard:
        options = replace(options, shard=None)
    shipper = build_shipper(
        settings,
        exporter=exporter,
        stop=stop,
        metrics=metrics,
        dead_letter=dead_letter,
        deadline_seconds=settings.export_deadline_seconds if one_shot else None,
        dry_run=dry_run,
        genai=genai,
    )
    return Worker(
        source=source,
        shipper=shipper,
        checkpoint=(_UnsavedCheckpoint if dry_run else Checkpoint)(settings.state_path),
        convert_options=convert_options(settings),
        resource=resource(settings),
        options=options,
        metrics=metrics,
        dead_letter=dead_letter,
        stop=stop,
        runs=runs,
        run_idle_seconds=run_idle_seconds,
        on_progress=on_progress,
        on_accepted=on_accepted,
        after_delivery=after_delivery,
        owns_run=owns_run,
        clock=clock,
    )


def api_configured(settings: Settings) -> bool:
    """Whether ``run --socket`` also uses the Letta API (enrichment and the reconciling poll):
    when its URL or key was set (flag, environment, TOML). The default URL alone does not turn
    it on: a socket-only sidecar makes its spans from the records alone."""
    return bool({"letta_base_url", "letta_api_key"} & settings.model_fields_set)


def reconcile_poll_seconds(settings: Settings) -> float:
    """The API poll's interval beside the socket: ``poll_interval_seconds`` when set, else
    60 s (:attr:`Settings.effective_poll_interval_seconds`)."""
    return settings.effective_poll_interval_seconds


def socket_sidecar(
    settings: Settings,
    *,
    socket: SocketSource,
    client: LettaClient | None,
    exporter: SpanExporter,
    stop: asyncio.Event,
    metrics: Metrics,
    dead_letter: DeadLetter,
    clock: Callable[[], float] = time.time,
    genai: GenAIMetrics | None = None,
) -> SocketSidecar:
    """The workers of ``run --socket``: the socket worker, and with ``client`` the API one.

    ``socket`` should count into ``metrics`` (``stats=MetricSocketStats(metrics)``).
    """
    watch_journal(socket, metrics)
    sidecar = SocketSidecar(socket)
    delivered = DeliveredTraces(delivered_path(settings.state_path)) if client else None
    source: Source = socket
    runs: RunContext | None = None
    if client is not None:
        enricher = StepEnricher(client, agent_ids=tuple(settings.agent_ids))
        source, runs = EnrichingSource(socket, enricher), enricher
    delivery = SocketDelivered(socket, delivered, metrics, clock=clock)
    sidecar.workers.append(
        WorkerTask(
            source_worker(
                settings,
                source=source,
                exporter=exporter,
                stop=stop,
                one_shot=False,
                metrics=metrics,
                dead_letter=dead_letter,
                runs=runs,
                run_idle_seconds=SOCKET_RUN_IDLE_SECONDS,
                on_accepted=delivery.accepted,
                after_delivery=delivery,
                drain_on_stop=True,
                clock=clock,
                genai=genai,
            ),
            poll_seconds=1.0,
            name="socket",
        )
    )
    if client is None or delivered is None:
        return sidecar
    seen = delivered
    poll = reconcile_poll_seconds(settings)
    checkpoint = Checkpoint(settings.state_path)
    api = _api_source(
        settings, client, checkpoint, one_shot=False, stop=stop, poll_seconds=poll, clock=clock
    )
    worker = Worker(
        source=SkipDelivered(api, seen),
        shipper=build_shipper(
            settings,
            exporter=exporter,
            stop=stop,
            metrics=metrics,
            dead_letter=dead_letter,
            deadline_seconds=None,
            genai=genai,
        ),
        checkpoint=checkpoint,
        convert_options=convert_options(settings),
        resource=resource(settings),
        options=worker_options(settings, one_shot=False),
        metrics=metrics,
        dead_letter=dead_letter,
        stop=stop,
        runs=api.lookups,
        run_idle_seconds=None,
        owns_run=lambda run_id: not seen.has_run(run_id),
        clock=clock,
    )
    sidecar.workers.append(WorkerTask(worker, poll_seconds=poll, name="api"))
    return sidecar


def socket_source(settings: Settings, *, stats: SocketStats | None = None) -> SocketSource:
    """The socket receiver of ``run --socket`` (not started: ``start()`` or ``read()`` listens).

    Raises:
        ConfigError: no socket is configured.
    """
    if settings.socket is None:
        raise ConfigError("socket", "not set (--socket, LETTA_EXPORTER_SOCKET)")
    return SocketSource(
        settings.socket,
        settings.effective_journal_dir,
        listener=ListenerOptions(
            mode=settings.socket_mode_bits,
            max_record_bytes=settings.socket_max_record_bytes,
            idle_timeout=settings.socket_idle_timeout,
        ),
        journal=JournalOptions(
            max_bytes=settings.journal_max_bytes,
            commit_delay=settings.journal_commit_ms / 1000,
        ),
        stats=stats,
    )


def postgres_options(settings: Settings, *, window: bool) -> PostgresOptions:
    """What the database source reads: the one-shot job's window (``window=True``: ``since``,
    ``until`` and ``limit``), or the sidecar's (``since`` bounds its first start only).

    Raises:
        ConfigError: no database URL is configured.
    """
    if settings.database_url is None:
        raise ConfigError(
            "database_url", "not set (--database-url, LETTA_EXPORTER_DATABASE_URL, LETTA_PG_URI)"
        )
    from .source._postgres import PostgresOptions

    return PostgresOptions(
        dsn=settings.database_url.get_secret_value(),
        since=settings.since,
        until=settings.until if window else None,
        agent_ids=tuple(settings.agent_ids),
        limit=settings.limit if window else None,
        shard=settings.shard_spec,
        key_page=settings.database_key_page,
        batch=settings.database_batch,
        statement_timeout=settings.database_statement_timeout,
        connect_timeout=settings.database_connect_timeout,
        poll_interval=settings.database_poll_seconds,
        overlap=settings.database_overlap_seconds,
    )


def postgres_source(
    settings: Settings, *, window: bool, stop: asyncio.Event | None = None
) -> PostgresSource:
    """The database source (``source=postgres``); see :func:`postgres_options`.

    Its checkpoint stream is keyed like the API's (:func:`stream`): the database (password
    masked) and the filters, with a one-shot job's window as written (``since=30d``), so the
    same command resumes its stream; the sidecar's ignores the window.
    """
    from .source._pg_dsn import mask_dsn
    from .source._postgres import PostgresSource

    options = postgres_options(settings, window=window)
    parts: dict[str, Any] = {
        "database": mask_dsn(options.dsn),
        "agents": sorted(settings.agent_ids),
        "shard": settings.shard,
    }
    if window:
        parts["since"] = settings.since_spec or (
            settings.since.isoformat() if settings.since else None
        )
        parts["until"] = settings.until_spec or (
            settings.until.isoformat() if settings.until else None
        )
    return PostgresSource(replace(options, stream=f"postgres:{stream_key(**parts)}"), stop=stop)


def postgres_run_source(settings: Settings, *, stop: asyncio.Event) -> PostgresSource:
    """The database source of ``run --source postgres`` (follows new rows until ``stop``)."""
    return postgres_source(settings, window=False, stop=stop)


def genai_metrics(settings: Settings, resource: Resource) -> GenAIMetrics | None:
    """GenAI metrics to the traces' collector (endpoint, protocol, headers, TLS, timeout and
    compression as for traces), counted once in a ledger beside the state file (one per
    shard); ``None`` when metrics are off (:attr:`Settings.metrics_enabled`).

    Raises:
        ConfigError: a bad endpoint, header or TLS file.
    """
    if not settings.metrics_enabled:
        return None
    tls = TlsFiles.load(
        certificate_file=settings.otlp_certificate,
        client_key_file=settings.otlp_client_key,
        client_certificate_file=settings.otlp_client_certificate,
    )
    return GenAIMetrics.from_config(
        endpoint=settings.otlp_metrics_url,
        protocol=settings.otlp_protocol,
        resource=resource,
        headers=settings.otlp_header_dict(),
        temporality=settings.metrics_temporality,
        agent_attribute=settings.metrics_agent_attribute,
        ledger_path=settings.metrics_ledger_path,
        timeout=settings.otlp_timeout_ms / 1000,
        compression=settings.otlp_compression,
        insecure=settings.otlp_insecure,
        tls=tls,
        export_interval_s=settings.metrics_interval_seconds,
    )
