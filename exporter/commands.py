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
from typing import Any, Final

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
from .progress import ExportProgress, count_records
from .replay import ReplayOptions, export_file
from .settings import Settings
from .shipping import ExportSummary
from .sink import Delivery, OtlpJsonFileExporter, deliver
from .source import LettaClient
from .telemetry import DeadLetter, HealthServer, Metrics

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["check", "convert", "export", "run"]

_logger = logging.getLogger("exporter.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


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
    try:
        async with wiring.letta_client(settings, stop=stop) as client:
            worker = wiring.build_worker(
                settings,
                client=client,
                exporter=exporter,
                stop=stop,
                one_shot=False,
                metrics=metrics,
            )
            stall = max(120.0, settings.poll_interval_seconds * 4)
            if settings.health_port:
                health = HealthServer(
                    host=settings.health_host,
                    port=settings.health_port,
                    metrics=metrics,
                    alive=lambda: time.time() - worker.heartbeat < stall,
                    ready=lambda: worker.passes > 0,
                    blocked=lambda: worker.blocked,
                )
                health.start()
                _logger.info(
                    "health on http://%s:%d (/healthz /readyz /metrics)",
                    settings.health_host,
                    health.port,
                )
            _logger.info(
                "sidecar started: Letta %s -> %s, polling every %.0fs",
                settings.letta_base_url,
                wiring.sink_target(settings),
                settings.poll_interval_seconds,
            )
            task = asyncio.create_task(
                worker.run_forever(poll_seconds=settings.poll_interval_seconds)
            )
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                stopper.cancel()
                task.result()  # a fatal error (checkpoint unwritable) ends the sidecar
                return _stopped(worker)
            done, _ = await asyncio.wait({task}, timeout=settings.shutdown_timeout_seconds)
            if not done:
                _logger.warning(
                    "in-flight work did not finish within %.0fs; stopping it (the checkpoint "
                    "holds the last delivered step)",
                    settings.shutdown_timeout_seconds,
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                task.result()
            return _stopped(worker)
    finally:
        if health is not None:
            health.stop()
        exporter.shutdown()


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
    total = None
    if settings.source == "file" and settings.input is not None:
        total = count_records(settings.input)
    progress = ExportProgress(
        enabled=not as_json and sys.stdout.isatty() and sys.stderr.isatty(),
        metrics=metrics,
        total=total,
    )
    waiting = asyncio.create_task(_say_what_it_waits_for(settings, metrics, stop))
    try:
        if settings.source == "letta" and not dry_run:
            probe_state(settings.state_path)  # before anything is sent
        exporter = wiring.build_exporter(settings)
        with progress:
            if settings.source == "file":
                assert settings.input is not None
                shipper = wiring.build_shipper(
                    settings,
                    exporter=exporter,
                    metrics=metrics,
                    dead_letter=dead_letter,
                    stop=stop,
                    deadline_seconds=settings.export_deadline_seconds,
                    dry_run=dry_run,
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
                    )
                    resumed = worker.state.cursor is not None
                    try:
                        await worker.export_window()
                    finally:
                        result.summary = worker.total
                    result.interrupted = stop.is_set()
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
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        if exporter is not None:
            exporter.shutdown()
    for warning in result.warnings:
        _logger.warning("%s", warning)
    return result


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
