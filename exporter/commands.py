"""What the commands do once their flags are read (the CLI imports this only when it runs one).

Kept apart from ``cli.py`` so ``--help``, bad-usage errors and the coordinating process of
``export --workers`` start without importing the pipeline (OpenTelemetry, gRPC, httpx, pydantic
models), which is most of the start-up time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import time
from typing import Any, Final

import click

from . import wiring
from .checkpoint import Checkpoint
from .errors import ExporterError, Stopped, UndeliveredError
from .replay import ReplayOptions, export_file
from .settings import Settings
from .shipping import ExportSummary
from .sink import OtlpJsonFileExporter, deliver
from .telemetry import DeadLetter, HealthServer, Metrics

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


def export(settings: Settings, *, dry_run: bool, as_json: bool) -> tuple[dict[str, Any], int]:
    """One export in this process: the summary (as printed) and the exit code."""
    _tune_gc()
    started = time.monotonic()
    summary, interrupted, error = asyncio.run(_export(settings, dry_run, as_json))
    data = summary.as_dict() | {
        "sink": "dry-run" if dry_run else wiring.sink_target(settings),
        "seconds": round(time.monotonic() - started, 3),
        "interrupted": interrupted,
        "error": error,
        "dead_letter_file": str(settings.dead_letter_path),
    }
    code = EXIT_OK if (summary.ok and error is None) or interrupted else EXIT_FAILED
    return data, code


def check(settings: Settings) -> bool:
    """Reach everything; True when all is well."""
    return asyncio.run(_check(settings))


def convert(settings: Settings, input_path: str, output: str, *, parents: bool) -> int:
    """Offline conversion of a file of ProviderTraces to OTLP JSON lines; the exit code."""
    exporter = OtlpJsonFileExporter(output)
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
    finally:
        exporter.shutdown()
    click.echo(
        f"converted {summary.exported} traces and {summary.run_spans} runs"
        + ("" if output == "-" else f" into {output}")
        + (f"; {summary.invalid} invalid records skipped (named above)" if summary.invalid else ""),
        err=True,
    )
    return EXIT_FAILED if summary.invalid else EXIT_OK


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
                return EXIT_OK
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
            _logger.info("stopped: %s", json.dumps(worker.total.as_dict()))
            return EXIT_OK
    finally:
        if health is not None:
            health.stop()
        exporter.shutdown()


async def _export(
    settings: Settings, dry_run: bool, as_json: bool
) -> tuple[ExportSummary, bool, str | None]:
    stop = asyncio.Event()
    _install_signals(stop)
    metrics = Metrics()
    exporter = wiring.build_exporter(settings)
    dead_letter = DeadLetter(settings.dead_letter_path)
    progress = _Progress(enabled=not as_json and sys.stderr.isatty())
    summary = ExportSummary()
    interrupted = False
    error: str | None = None
    try:
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
                summary = await export_file(
                    settings.input,
                    shipper=shipper,
                    convert_options=wiring.convert_options(settings),
                    resource=wiring.resource(settings),
                    options=ReplayOptions(batch_size=settings.batch_size, limit=settings.limit),
                    on_progress=progress.update,
                )
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
                    )
                    try:
                        summary = await worker.export_window()
                    finally:
                        summary = worker.total
                    interrupted = stop.is_set()
    except Stopped:
        interrupted = True
    except UndeliveredError as exc:
        error = str(exc)
        summary.undelivered += len(exc.trace_ids)
        summary.fail(str(exc))
    finally:
        exporter.shutdown()
    return summary, interrupted, error


class _Progress:
    """A rich progress line on a terminal; nothing otherwise (the summary says it all)."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self._enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("exporting", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, summary: ExportSummary) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                description=(
                    f"exported {summary.exported} traces, {summary.run_spans} runs"
                    f" | missing {summary.missing} | failed "
                    f"{summary.invalid + summary.rejected + summary.undelivered}"
                ),
            )


async def _check(settings: Settings) -> bool:
    click.echo(
        f"ok    config: sink {wiring.sink_target(settings)}, content {settings.content}, "
        f"state {settings.state_path}"
    )
    ok = True
    if settings.source == "letta":
        try:
            async with wiring.letta_client(settings) as client:
                found = await client.check()
            click.echo(f"ok    letta: {found}")
        except ExporterError as exc:
            click.echo(f"FAIL  letta: {exc}")
            ok = False
    exporter = wiring.build_exporter(settings)
    try:
        delivery = await asyncio.to_thread(deliver, exporter, [])
        if delivery.delivered:
            click.echo(f"ok    sink: {wiring.sink_target(settings)} accepted an empty export")
        else:
            click.echo(f"FAIL  sink: {wiring.sink_target(settings)}: {delivery.message}")
            ok = False
    finally:
        exporter.shutdown()
    try:
        Checkpoint(settings.state_path)
        click.echo(f"ok    checkpoint: {settings.state_path} readable")
    except ExporterError as exc:
        click.echo(f"FAIL  checkpoint: {exc}")
        ok = False
    return ok
