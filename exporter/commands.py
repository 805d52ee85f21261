"""What the commands do once their flags are read (the CLI imports this only when it runs one).

Kept apart from ``cli.py`` so ``--help``, bad-usage errors and the coordinating process of
``export --workers`` start without importing the pipeline (OpenTelemetry, gRPC, httpx, pydantic
models), which is most of the start-up time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from . import timeshift, wiring
from .checkpoint import Checkpoint
from .errors import (
    CheckpointError,
    ConfigError,
    ExporterError,
    SourceHTTPError,
    Stopped,
    UndeliveredError,
)
from .genai_metrics import GenAIMetrics
from .progress import ExportProgress, count_records
from .replay import ReplayOptions, export_file
from .settings import Settings
from .shipping import ExportSummary
from .sink import Delivery, OtlpJsonFileExporter, deliver
from .source import LettaClient
from .telemetry import DeadLetter, HealthServer, Metrics
from .worker import Worker

if TYPE_CHECKING:  # psycopg is imported only when the database source is used
    from .source._postgres import PostgresSource

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["check", "convert", "export", "run"]

_logger = logging.getLogger("exporter.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2


def _tune_gc() -> None:
    # The pipeline allocates many short-lived, acyclic objects (parsed JSON, spans): the cyclic
    # collector's default thresholds would walk them thousands of times a second. Objects from
    # start-up are frozen out of its way; reference counting still frees everything at once.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def run(settings: Settings) -> int:
    """The sidecar, until SIGTERM/SIGINT."""
    _tune_gc()
    return asyncio.run(_run(settings))


def export(
    settings: Settings, *, dry_run: bool, as_json: bool, shift_to_now: bool = False
) -> tuple[dict[str, Any], int]:
    """One export in this process: the summary (as printed) and the exit code."""
    _tune_gc()
    started = time.monotonic()
    dead_letter = DeadLetter(settings.dead_letter_path)
    appended = not dry_run and settings.effective_sink == "file" and _holds_data(settings.output)
    result = asyncio.run(_export(settings, dry_run, as_json, dead_letter, shift_to_now))
    summary = result.summary
    failed = not summary.ok or result.error is not None or dead_letter.lost > 0
    data = summary.as_dict() | {
        "ok": not failed,
        "sink": "dry-run" if dry_run else wiring.sink_target(settings),
        "seconds": round(time.monotonic() - started, 3),
        "interrupted": result.interrupted,
        "error": result.error,
        "warnings": result.warnings,
        # Named only when something is in it: a path with nothing behind it sends people looking.
        "dead_letter_file": str(settings.dead_letter_path) if dead_letter.count else None,
        "dead_letter_records": dead_letter.count,
        "dead_letter_lost": dead_letter.lost,
        "appended_to": str(settings.output) if appended else None,
    }
    code = EXIT_FAILED if failed and not (result.interrupted and summary.ok) else EXIT_OK
    if dead_letter.lost:
        code = EXIT_FAILED  # a record neither delivered nor written down anywhere
    if result.configuration:
        code = EXIT_CONFIG
    return data, code


def _holds_data(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def check(settings: Settings) -> bool:
    """Reach everything; True when all is well."""
    return asyncio.run(_check(settings))


class _PipeClosed(BaseException):
    """The reader of stdout went away (``convert ... | head``)."""


class _ConvertOutput(OtlpJsonFileExporter):
    """The file sink for ``convert``: a closed pipe ends the command, as it does a Unix tool."""

    def _write_stdout(self, data: bytes) -> Delivery:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise _PipeClosed from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise _PipeClosed from None
            return Delivery(delivered=False, permanent=True, message=f"stdout: {exc.strerror}")
        return Delivery(delivered=True)


def convert(settings: Settings, input_path: str, output: str, *, parents: bool) -> int:
    """Offline conversion of a file of ProviderTraces to OTLP JSON lines; the exit code."""
    # A filter: Ctrl-C stops it at once, even while it waits on a silent stdin.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    exporter = _ConvertOutput(output)
    shipper = wiring.build_shipper(
        settings,
        exporter=exporter,
        metrics=Metrics(),
        dead_letter=DeadLetter(settings.dead_letter_path),
        stop=asyncio.Event(),
        deadline_seconds=0.0,
    )
    try:
        summary = asyncio.run(
            export_file(
                input_path,
                shipper=shipper,
                convert_options=wiring.convert_options(settings),
                resource=wiring.resource(settings),
                options=ReplayOptions(batch_size=settings.batch_size, parents=parents),
                dead_letter=False,
            )
        )
    except _PipeClosed:
        # Whoever reads stdout has what it wanted; Python's own flush at exit must not complain.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        exporter.shutdown()
    click.echo(
        f"converted {summary.exported} traces and {summary.run_spans} runs"
        + ("" if output == "-" else f" into {output}")
        + (f"; {summary.invalid} invalid records skipped (named above)" if summary.invalid else ""),
        err=True,
    )
    if not summary.discovered and not summary.invalid:
        _logger.warning("%s holds no traces: nothing converted", input_path)
    return EXIT_FAILED if summary.invalid else EXIT_OK


def probe_state(path: Path) -> str:
    """Make sure run/export can read, create, lock and write the checkpoint, before any span is
    sent (a checkpoint that cannot be saved would re-send everything next time); what is there.

    Raises:
        CheckpointError: it cannot be read (or is not a state file), created, locked or written.
    """
    Checkpoint(path)  # reads and validates what is there
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
        lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                with contextlib.suppress(BlockingIOError):  # held by a peer: saves will wait
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as exc:
        raise CheckpointError(
            str(path), f"cannot create, lock or write it: {exc.strerror or exc}"
        ) from None
    return _describe_state(path)


def _describe_state(path: Path) -> str:
    if not path.exists():
        return f"{path} not found (it is created at the first delivery)"
    try:
        streams = json.loads(path.read_bytes()).get("streams") or {}
    except (OSError, ValueError, AttributeError):
        return f"{path} readable"
    delivered = sum(int(s.get("delivered") or 0) for s in streams.values())
    pending = sum(len(s.get("pending") or {}) for s in streams.values())
    open_runs = sum(len(s.get("open_runs") or {}) for s in streams.values())
    return (
        f"{path}: {len(streams)} filter set(s), {delivered} traces delivered so far, "
        f"{pending} steps waiting for their trace, {open_runs} runs open"
    )


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        _logger.info("%s received: finishing in-flight work, then saving the checkpoint", sig.name)
    stop.set()


async def _run(settings: Settings) -> int:
    stop = asyncio.Event()
    _install_signals(stop)
    metrics = Metrics()
    probe_state(settings.state_path)  # before anything is sent
    exporter = wiring.build_exporter(settings)
    health: HealthServer | None = None
    genai: GenAIMetrics | None = None
    try:
        genai = _genai_metrics(settings, dry_run=False)
        async with contextlib.AsyncExitStack() as stack:
            plan = await _sidecar_plan(settings, stack, exporter, stop, metrics, genai)
            if settings.health_port:
                health = HealthServer(
                    host=settings.health_host,
                    port=settings.health_port,
                    metrics=metrics,
                    alive=plan.alive,
                    ready=plan.ready,
                    blocked=plan.blocked,
                )
                health.start()
                _logger.info(
                    "health on http://%s:%d (/healthz /readyz /metrics)",
                    settings.health_host,
                    health.port,
                )
            _logger.info("sidecar started: %s -> %s", plan.describe, wiring.sink_target(settings))
            return await _run_workers(settings, plan, stop)
    finally:
        if health is not None:
            health.stop()
        await _shutdown_genai(genai)
        exporter.shutdown()


@dataclass(slots=True)
class _SidecarPlan:
    """The workers ``run`` drives, what /readyz says and what a shutdown does first."""

    tasks: list[Any]
    describe: str
    ready: Any
    drain: Any = None
    leftover: Any = None  # records left undelivered at exit (the socket's journal)
    waits_for_records: Any = None  # the worker that sleeps until a record comes (the socket's)

    def blocked(self) -> str | None:
        """Why delivery is stopped by a configuration failure (a refused credential, a wrong
        path), for /readyz; None while every worker can deliver."""
        for task in self.tasks:
            if (reason := task.worker.blocked) is not None:
                return str(reason)
        return None

    def alive(self) -> bool:
        """/healthz: every worker made progress lately (the socket worker, waiting for
        records, is alive while its listener is up)."""
        now = time.time()
        for task in self.tasks:
            if task.worker is self.waits_for_records and self.ready():
                continue
            if now - task.worker.heartbeat >= max(120.0, task.poll_seconds * 4):
                return False
        return True


async def _sidecar_plan(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    exporter: Any,
    stop: asyncio.Event,
    metrics: Metrics,
    genai: GenAIMetrics | None,
) -> _SidecarPlan:
    from .sidecar import MetricSocketStats, WorkerTask

    dead_letter = DeadLetter(settings.dead_letter_path)
    if settings.source == "postgres":
        source = wiring.postgres_run_source(settings, stop=stop)
        stack.push_async_callback(source.aclose)
        worker = wiring.source_worker(
            settings,
            source=source,
            exporter=exporter,
            stop=stop,
            one_shot=False,
            metrics=metrics,
            dead_letter=dead_letter,
            runs_by_shard=False,
            genai=genai,
        )
        poll = settings.database_poll_seconds
        return _SidecarPlan(
            tasks=[WorkerTask(worker, poll, "postgres")],
            describe=f"Letta's database {source.target}, polling every {poll:.0f}s",
            ready=lambda: worker.passes > 0,
        )
    client = None
    if settings.socket is None or wiring.api_configured(settings):
        client = await stack.enter_async_context(wiring.letta_client(settings, stop=stop))
    if settings.socket is None:
        assert client is not None
        worker = wiring.build_worker(
            settings,
            client=client,
            exporter=exporter,
            stop=stop,
            one_shot=False,
            metrics=metrics,
            dead_letter=dead_letter,
            genai=genai,
        )
        poll = settings.poll_interval_seconds
        return _SidecarPlan(
            tasks=[WorkerTask(worker, poll, "api")],
            describe=f"Letta {settings.letta_base_url}, polling every {poll:.0f}s",
            ready=lambda: worker.passes > 0,
        )
    socket = wiring.socket_source(settings, stats=MetricSocketStats(metrics))
    sidecar = wiring.socket_sidecar(
        settings,
        socket=socket,
        client=client,
        exporter=exporter,
        stop=stop,
        metrics=metrics,
        dead_letter=dead_letter,
        genai=genai,
    )
    stack.push_async_callback(sidecar.aclose)
    await sidecar.start()  # listen at once: records are journaled while the rest starts
    api = (
        f"; Letta {settings.letta_base_url} for context, reconciled every "
        f"{wiring.reconcile_poll_seconds(settings):g}s"
        if client is not None
        else "; no Letta API (spans from the records alone)"
    )
    return _SidecarPlan(
        tasks=sidecar.workers,
        describe=f"socket {socket.path} (journal {socket.journal_dir}){api}",
        ready=sidecar.ready,
        drain=sidecar.drain,
        leftover=lambda: socket.journal.depth_records,
        waits_for_records=sidecar.workers[0].worker,
    )


async def _run_workers(settings: Settings, plan: _SidecarPlan, stop: asyncio.Event) -> int:
    """Drive every worker until SIGTERM, then give in-flight work the shutdown timeout."""
    tasks = {
        asyncio.create_task(t.worker.run_forever(poll_seconds=t.poll_seconds), name=t.name): t
        for t in plan.tasks
    }
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        # A worker ended on its own: a fatal error (checkpoint unwritable). Stop the others.
        stop.set()
    stopper.cancel()
    if plan.drain is not None:
        await plan.drain()  # no new records; the socket worker ships what the journal holds
    done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_seconds)
    if pending:
        _logger.warning(
            "in-flight work did not finish within %.0fs; stopping it (the checkpoint "
            "holds the last delivered record)",
            settings.shutdown_timeout_seconds,
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a fatal error ends the sidecar with its message
    code = EXIT_OK
    for task in tasks.values():
        code = max(code, _stopped(task.worker))
    left = plan.leftover() if plan.leftover is not None else 0
    if left:
        _logger.warning(
            "%d received records were not delivered before the exit (the collector did not "
            "take them); they stay journaled and are shipped at the next start",
            left,
        )
        code = EXIT_FAILED
    return code


def _stopped(worker: Any) -> int:
    """The sidecar's last line and exit code: a run that delivered nothing because every pass
    failed (a refused API key, Letta unreachable) is not a success."""
    data = worker.total.as_dict()
    error = getattr(worker, "last_error", None)
    blocked = getattr(worker, "blocked", None)
    if blocked is not None:
        data |= {"ok": False, "error": f"the collector refuses this exporter's setup: {blocked}"}
    elif error is not None and not worker.total.exported:
        data |= {"ok": False, "error": error}
    _logger.info("stopped: %s", json.dumps(data))
    return EXIT_OK if data["ok"] else EXIT_FAILED


@dataclass(slots=True)
class _ExportResult:
    summary: ExportSummary
    interrupted: bool = False
    error: str | None = None
    configuration: bool = False
    warnings: list[str] = field(default_factory=list)


async def _export(
    settings: Settings,
    dry_run: bool,
    as_json: bool,
    dead_letter: DeadLetter,
    shift_to_now: bool = False,
) -> _ExportResult:
    stop = asyncio.Event()
    _install_signals(stop)
    metrics = Metrics()
    result = _ExportResult(ExportSummary())
    exporter = None
    genai: GenAIMetrics | None = None
    total = None
    show = not as_json and sys.stdout.isatty() and sys.stderr.isatty()
    if settings.source == "file" and settings.input is not None:
        total = count_records(settings.input)
    waiting = asyncio.create_task(_say_what_it_waits_for(settings, metrics, stop))
    database: PostgresSource | None = None
    try:
        if settings.source in ("letta", "postgres") and not dry_run:
            probe_state(settings.state_path)  # before anything is sent
        if settings.source == "postgres":
            database = wiring.postgres_source(settings, window=True)
            if show:
                total = await _database_total(database, settings)
        progress = ExportProgress(enabled=show, metrics=metrics, total=total)
        exporter = wiring.build_exporter(settings)
        genai = _genai_metrics(settings, dry_run=dry_run)
        with progress:
            if database is not None:
                worker = wiring.source_worker(
                    settings,
                    source=database,
                    exporter=exporter,
                    stop=stop,
                    one_shot=True,
                    dry_run=dry_run,
                    metrics=metrics,
                    dead_letter=dead_letter,
                    on_progress=progress.update,
                    runs_by_shard=False,
                    genai=genai,
                )
                resumed = await _export_window(worker, result, stop)
                if not result.summary.discovered and not result.interrupted:
                    result.warnings.append(
                        "nothing new since the last run of this command (it resumed from the "
                        "checkpoint)"
                        if resumed
                        else f"no provider traces in the window in {database.target}"
                    )
            elif settings.source == "file":
                assert settings.input is not None
                shipper = wiring.build_shipper(
                    settings,
                    exporter=exporter,
                    metrics=metrics,
                    dead_letter=dead_letter,
                    stop=stop,
                    deadline_seconds=settings.export_deadline_seconds,
                    dry_run=dry_run,
                    genai=genai,
                )
                result.summary = await export_file(
                    settings.input,
                    shipper=shipper,
                    convert_options=wiring.convert_options(settings),
                    resource=wiring.resource(settings),
                    options=_replay_options(settings, shift_to_now),
                    on_progress=progress.update,
                )
                if not result.summary.discovered and not result.summary.invalid:
                    result.warnings.append(f"{settings.input} holds no traces: nothing exported")
            else:
                async with wiring.letta_client(settings, stop=stop) as client:
                    worker = wiring.build_worker(
                        settings,
                        client=client,
                        exporter=exporter,
                        stop=stop,
                        one_shot=True,
                        dry_run=dry_run,
                        metrics=metrics,
                        on_progress=progress.update,
                        dead_letter=dead_letter,
                        genai=genai,
                    )
                    resumed = await _export_window(worker, result, stop)
                    if not result.summary.discovered and not result.interrupted:
                        result.warnings.extend(await _why_nothing(settings, client, resumed))
    except Stopped:
        result.interrupted = True
    except UndeliveredError as exc:
        result.error = str(exc)
        result.summary.undelivered += len(exc.trace_ids)
    except ConfigError:
        raise
    except ExporterError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        # A database that refuses the credentials or lacks a table: a setting to change.
        result.configuration = bool(getattr(exc, "configuration", False))
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await _shutdown_genai(genai)
        if database is not None:
            await database.aclose()
        if exporter is not None:
            exporter.shutdown()
    for warning in result.warnings:
        _logger.warning("%s", warning)
    return result


def _genai_metrics(settings: Settings, *, dry_run: bool) -> GenAIMetrics | None:
    """The GenAI metrics when they are on (none in a dry run: nothing is delivered).

    An optional signal never stops the traces: a ledger that cannot be read is one warning,
    and the export goes on without metrics.

    Raises:
        ConfigError: a bad endpoint, header or TLS file (as for the traces).
    """
    if dry_run:
        return None
    try:
        return wiring.genai_metrics(settings, wiring.resource(settings))
    except OSError as exc:
        _logger.warning(
            "GenAI metrics off: cannot read the metrics ledger %s (%s); traces go on",
            settings.metrics_ledger_path,
            exc.strerror or exc,
        )
        return None


async def _shutdown_genai(genai: GenAIMetrics | None) -> None:
    """Export what the metrics hold and stop them (off the event loop: it sends)."""
    if genai is not None:
        await asyncio.to_thread(genai.shutdown)


async def _export_window(worker: Worker, result: _ExportResult, stop: asyncio.Event) -> bool:
    """Run a one-shot worker, its totals into ``result`` whatever happens; whether it resumed a
    saved cursor (so "nothing new" rather than "nothing there")."""
    resumed = worker.state.cursor is not None
    try:
        await worker.export_window()
    finally:
        result.summary = worker.total
    result.interrupted = stop.is_set()
    return resumed


async def _database_total(database: PostgresSource, settings: Settings) -> int | None:
    """The progress bar's total: the rows in the window (a shard's share of them)."""
    try:
        rows = await database.count()
    except ExporterError:
        return None  # the export itself reports it
    shard = settings.shard_spec
    return -(-rows // shard[1]) if shard else rows


def _replay_options(settings: Settings, shift_to_now: bool) -> ReplayOptions:
    shift = None
    if shift_to_now and settings.input is not None:
        newest = timeshift.newest_time(settings.input)
        shift = timeshift.shift_offset(newest)
        _logger.info("times shifted by %s so the newest trace ends now", shift)
    return ReplayOptions(batch_size=settings.batch_size, limit=settings.limit, shift=shift)


async def _why_nothing(settings: Settings, client: LettaClient, resumed: bool) -> list[str]:
    """Why an export found no step: said in a warning, since exit 0 alone says nothing."""
    reasons: list[str] = []
    now = datetime.now(UTC)
    if settings.since is not None and settings.since > now:
        reasons.append(f"--since {settings.since.isoformat()} is in the future: nothing to export")
    for agent_id in settings.agent_ids:
        try:
            known = await client.get_agent(agent_id)
        except SourceHTTPError as exc:
            if 400 <= exc.status_code < 500:  # a malformed id is refused before it is looked up
                known = None
            else:
                continue
        except ExporterError:
            continue
        if known is None:
            reasons.append(f"--agent-id {agent_id}: Letta has no such agent; nothing exported")
    if not reasons:
        reasons.append(
            "nothing new since the last run of this command (it resumed from the checkpoint)"
            if resumed
            else "no steps in the window: nothing exported"
        )
    return reasons


async def _say_what_it_waits_for(settings: Settings, metrics: Metrics, stop: asyncio.Event) -> None:
    """While the collector refuses or cannot be reached, say so every few seconds (the shipper
    logs the cause once a minute; a long silence looks like a hang)."""
    seen = 0.0
    since: float | None = None
    every = min(10.0, max(0.5, settings.export_deadline_seconds / 4))
    while not stop.is_set():
        await asyncio.sleep(every)
        failures = metrics.value("letta_exporter_export_failures_total")
        if failures > seen:
            since = since or time.monotonic() - every
            _logger.warning(
                "waiting for the collector at %s: %d attempts failed over %.0fs; retrying until "
                "--export-deadline (%.0fs), the checkpoint waits",
                wiring.sink_target(settings),
                failures,
                time.monotonic() - since,
                settings.export_deadline_seconds,
            )
            seen = failures
        else:
            since = None


async def _check(settings: Settings) -> bool:
    click.echo(f"ok    config: content {settings.content}, source {settings.source}")
    ok = True
    if settings.source == "letta":
        try:
            async with wiring.letta_client(settings) as client:
                found = await client.check()
                click.echo(f"ok    letta: {found}")
                click.echo(f"ok    window: {await _sample_window(settings, client)}")
        except ExporterError as exc:
            click.echo(f"FAIL  letta: {exc}")
            ok = False
    if settings.source == "postgres":
        ok = await _check_database(settings) and ok
    if settings.socket is not None:
        ok = await _check_socket(settings) and ok
    exporter = wiring.build_exporter(settings)
    try:
        delivery = await asyncio.to_thread(deliver, exporter, [])
        if delivery.delivered:
            click.echo(f"ok    sink: {wiring.sink_target(settings)} accepted an empty export")
        else:
            click.echo(f"FAIL  sink: {delivery.message}")
            ok = False
    finally:
        exporter.shutdown()
    try:
        click.echo(f"ok    checkpoint: {probe_state(settings.state_path)}")
    except ExporterError as exc:
        click.echo(f"FAIL  checkpoint: {exc}")
        ok = False
    return ok


async def _check_database(settings: Settings) -> bool:
    """Letta's database: reachable, its schema readable, the rows of the window, and the index
    that would help (with what a key page costs without it). Every line names the database with
    its password masked; a refused password or a missing table is one FAIL line."""
    source = wiring.postgres_source(settings, window=True)
    try:
        found = await source.check()
    except ExporterError as exc:
        click.echo(f"FAIL  database: {exc}")
        return False
    finally:
        await source.aclose()
    for line in found.lines():
        click.echo(f"{'note' if line == found.advice else 'ok'}    database: {line}")
    return True


async def _check_socket(settings: Settings) -> bool:
    """The socket of ``run --socket``, looked at from outside (the sidecar may be serving it):
    whether it accepts connections, when the journal last took a record (so whether Letta seems
    to be writing to it), and whether the journal's directory can be written.

    A missing or stale socket is a warning: ``run`` creates or replaces it when it starts. A
    path that is something else (``run`` would refuse it) or a journal that cannot be written
    fails the check.
    """
    path = settings.socket
    assert path is not None
    found = await wiring.socket_source(settings).check()
    ok = True
    line = found.describe()
    if found.connectable:
        tag = "ok" if found.last_received is not None else "WARN"
        click.echo(f"{tag:<6}socket: {line}{_socket_access(path, settings.socket_mode_bits)}")
    elif found.is_socket:
        click.echo(f"WARN  socket: {line} (stale: `run --socket` replaces it when it starts)")
    elif path.exists() or path.is_symlink():
        click.echo(f"FAIL  socket: {path} is not a socket; `run --socket` would refuse it")
        ok = False
    else:
        click.echo(f"WARN  socket: no socket at {path} (`run --socket` creates it when it starts)")
    journal = settings.effective_journal_dir
    problem = _unwritable(journal)
    if problem is not None:
        click.echo(f"FAIL  journal: {journal}: {problem}")
        return False
    held = _journal_bytes(journal)
    where = f"{held} bytes in segments" if held is not None else "not created yet"
    click.echo(f"ok    journal: {journal} ({where})")
    return ok


def _socket_access(path: Path, wanted: int) -> str:
    """The socket file's mode and group, and a note when the mode is not the configured one."""
    try:
        info = path.stat()
    except OSError:
        return ""
    try:
        import grp

        group = grp.getgrgid(info.st_gid).gr_name
    except (ImportError, KeyError):
        group = str(info.st_gid)
    mode = info.st_mode & 0o777
    note = "" if mode == wanted else f" (socket_mode is {wanted:04o})"
    return f"; mode {mode:04o}{note}, group {group}"


def _unwritable(directory: Path) -> str | None:
    """Why the journal could not be kept in ``directory`` (``None``: it can), creating nothing."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _journal_bytes(directory: Path) -> int | None:
    if not directory.is_dir():
        return None
    try:
        return sum(p.stat().st_size for p in directory.glob("*.seg"))
    except OSError:
        return None


#: Steps ``check`` looks at: a page or two, so it stays quick on a server with a long history.
_SAMPLE_STEPS: Final = 100
_SAMPLE_TRACES: Final = 5


async def _sample_window(settings: Settings, client: LettaClient) -> str:
    """What the export window holds, cheaply: steps and runs of the first pages, and whether the
    first few steps have a trace (tracking may be off on the server)."""
    steps: list[Any] = []
    async for found in client.discover(wiring.step_filter(settings, until_now=True)):
        steps.append(found.step)
        if len(steps) >= _SAMPLE_STEPS:
            break
    runs = {s.run_id for s in steps if s.run_id}
    more = "+" if len(steps) >= _SAMPLE_STEPS else ""
    if not steps:
        return "no steps in the window (check --since, --agent-id, the project)"
    sampled = steps[:_SAMPLE_TRACES]
    traced = 0
    for step in sampled:
        if await client.get_trace(step.id) is not None:
            traced += 1
    return (
        f"{len(steps)}{more} steps in {len(runs)}{more} runs; {traced} of the first "
        f"{len(sampled)} have a provider trace"
    )
