"""The ``letta-otel-exporter`` command: parse flags, build Settings, wire the stages, report.

Exit codes: 0 everything delivered (or a clean shutdown on SIGTERM/SIGINT), 1 some traces were
not delivered (they are named) or a stage failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from . import __version__, wiring
from .checkpoint import Checkpoint
from .errors import ConfigError, ExporterError
from .logs import setup_logging
from .parallel import run_workers, sub_shards
from .replay import ReplayOptions, export_file
from .settings import Settings
from .shipping import ExportSummary, Shipper, Stopped, UndeliveredError
from .sink import OtlpJsonFileExporter, build_exporter
from .source import LettaClient
from .telemetry import DeadLetter, HealthServer, Metrics

__all__ = ["app", "main"]

_logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

F = TypeVar("F", bound=Callable[..., Any])

_EPILOG_RUN = """\b
Examples:
  # next to a local Letta server, to a local collector over gRPC
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \\
    letta-otel-exporter run
  # Letta Cloud, only two agents, health and metrics on :9464
  LETTA_BASE_URL=https://api.letta.com LETTA_API_KEY=... \\
    letta-otel-exporter run --agent-id agent-1 --agent-id agent-2 --sink otlp
"""

_EPILOG_EXPORT = """\b
Examples:
  # the shipped sample, into an OTLP JSON lines file (no server needed)
  letta-otel-exporter export --source file --input examples/provider-traces.jsonl
  # the last 24 hours of a Letta server, to a collector, with a JSON summary
  letta-otel-exporter export --since 24h --sink otlp \\
    --otlp-endpoint http://localhost:4318 --json
  # what would be sent, without sending
  letta-otel-exporter export --since 2026-11-01T00:00:00Z --until 2026-11-02T00:00:00Z --dry-run
"""

_EPILOG_CONVERT = """\b
Examples:
  letta-otel-exporter convert trace.json                  # OTLP JSON on stdout
  curl -s $LETTA/v1/steps/$STEP/trace | letta-otel-exporter convert - -o spans.jsonl
  letta-otel-exporter convert dump.jsonl --content full -o spans.jsonl
"""

_EPILOG_CHECK = """\b
Examples:
  letta-otel-exporter check
  letta-otel-exporter check --config /etc/letta-otel-exporter/exporter.toml
"""


# ---------------------------------------------------------------------------------- options
def _settings_options(func: F) -> F:
    """Flags every command shares; each maps to the Settings field named as its dest."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML config file (default: $LETTA_EXPORTER_CONFIG).",
        ),
        click.option("--letta-url", "letta_base_url", help="Letta base URL ($LETTA_BASE_URL)."),
        click.option("--project-id", help="Letta project (X-Project-Id header and filter)."),
        click.option(
            "--sink",
            type=click.Choice(["auto", "otlp", "file", "console"]),
            help="Where spans go (auto: OTLP if an endpoint is set, else the file).",
        ),
        click.option(
            "--output", type=click.Path(path_type=Path), help="OTLP JSON lines file (sink=file)."
        ),
        click.option("--otlp-endpoint", help="OTLP base endpoint ($OTEL_EXPORTER_OTLP_ENDPOINT)."),
        click.option(
            "--otlp-protocol",
            type=click.Choice(["grpc", "http/protobuf"]),
            help="OTLP protocol ($OTEL_EXPORTER_OTLP_PROTOCOL).",
        ),
        click.option(
            "--otlp-compression", type=click.Choice(["none", "gzip"]), help="OTLP compression."
        ),
        click.option("--otlp-timeout-ms", type=int, help="OTLP export timeout (ms)."),
        click.option(
            "--otlp-insecure/--otlp-secure",
            default=None,
            help="gRPC without TLS (endpoints without http/https scheme).",
        ),
        click.option(
            "--content",
            type=click.Choice(["none", "full", "raw"]),
            help="Prompt/completion content on spans (default none).",
        ),
        click.option(
            "--redact",
            "redact_patterns",
            multiple=True,
            help="Regex blanked out of content (repeatable).",
        ),
        click.option("--service-name", help="service.name ($OTEL_SERVICE_NAME, default letta)."),
        click.option("--concurrency", type=int, help="Letta requests in flight (default 8)."),
        click.option(
            "--discovery",
            type=click.Choice(["auto", "steps", "runs"]),
            help="How steps are found.",
        ),
        click.option("--state-path", type=click.Path(path_type=Path), help="Checkpoint file."),
        click.option(
            "--dead-letter-path", type=click.Path(path_type=Path), help="Dead-letter file."
        ),
        click.option(
            "--join-letta-traces/--no-join-letta-traces",
            default=None,
            help="Put spans into the Letta server's own traces when steps carry one.",
        ),
        click.option(
            "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], False)
        ),
        click.option("--log-format", type=click.Choice(["text", "json"])),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filter_options(func: F) -> F:
    options = [
        click.option("--since", help="Steps created after: ISO time or relative (24h, 7d)."),
        click.option(
            "--agent-id", "agent_ids", multiple=True, help="Only this agent (repeatable)."
        ),
        click.option("--model", help="Only steps of this model."),
        click.option("--shard", help="'i/n': export only this replica's share of the steps."),
        click.option(
            "--trace-settle-seconds",
            type=float,
            help="How long a null trace is asked again before it counts as missing.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(flags: dict[str, Any]) -> Settings:
    config_file = flags.pop("config_file", None)
    settings = Settings.load(config_file=config_file, **flags)
    setup_logging(settings.log_level, settings.log_format)
    return settings


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn the exporter's errors into one line on stderr and an exit code: no tracebacks."""
    try:
        yield
    except ConfigError as exc:
        click.echo(f"ConfigError: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except ExporterError as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        _logger.info("%s received: finishing in-flight work, then saving the checkpoint", sig.name)
    stop.set()


# ---------------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="letta-otel-exporter")
def app() -> None:
    """Export Letta's LLM provider traces as OpenTelemetry GenAI spans over OTLP.

    Every LLM call a Letta agent makes (its ProviderTrace) becomes a span in Jaeger, Grafana
    Tempo, Phoenix or any OTLP backend, one trace per agent run. Settings come from flags, then
    environment (LETTA_BASE_URL, LETTA_API_KEY, OTEL_*, LETTA_EXPORTER_*), then a TOML file.
    """


@app.command(epilog=_EPILOG_RUN)
@_settings_options
@_filter_options
@click.option("--poll-interval", "poll_interval_seconds", type=float, help="Seconds between polls.")
@click.option("--health-host", help="Address of /healthz, /readyz and /metrics.")
@click.option("--health-port", type=int, help="Port of /healthz, /readyz and /metrics (0: off).")
@click.option("--shutdown-timeout", "shutdown_timeout_seconds", type=float)
def run(**flags: Any) -> None:
    """Run as a sidecar: poll Letta, export new traces, checkpoint, until SIGTERM."""
    with _errors():
        settings = _load(flags)
        code = asyncio.run(_run(settings))
    sys.exit(code)


async def _run(settings: Settings) -> int:
    stop = asyncio.Event()
    _install_signals(stop)
    metrics = Metrics()
    exporter = build_exporter(settings)
    health: HealthServer | None = None
    try:
        async with LettaClient.from_settings(settings, stop=stop) as client:
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


@app.command(epilog=_EPILOG_EXPORT)
@_settings_options
@_filter_options
@click.option("--until", help="Steps created before: ISO time or relative (default: now).")
@click.option("--limit", type=int, help="Export at most this many traces.")
@click.option("--dry-run", is_flag=True, help="Fetch and convert, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--source", type=click.Choice(["letta", "file"]), help="Letta API (default) or a file."
)
@click.option(
    "--input",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="ProviderTraces file (JSON or JSON lines; - for stdin) for --source file.",
)
@click.option("--export-deadline", "export_deadline_seconds", type=float)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes exporting side by side, each a shard of the steps (a backfill on a "
    "machine with several cores; needs the Letta source and the OTLP sink).",
)
def export(dry_run: bool, as_json: bool, workers: int, **flags: Any) -> None:
    """Export once (a backfill): every trace in the window, then exit with a summary."""
    with _errors():
        settings = _load(flags)
        if workers > 1:
            sys.exit(_export_in_parallel(settings, workers, as_json))
        started = time.monotonic()
        summary, interrupted, error = asyncio.run(_export(settings, dry_run, as_json))
        _report(settings, summary, time.monotonic() - started, as_json, interrupted, error, dry_run)
    sys.exit(EXIT_OK if (summary.ok and error is None) or interrupted else EXIT_FAILED)


def _export_in_parallel(settings: Settings, workers: int, as_json: bool) -> int:
    if settings.source != "letta":
        raise ConfigError("--workers", "needs the Letta source (a file is read by one process)")
    if settings.effective_sink != "otlp":
        raise ConfigError(
            "--workers", "needs the OTLP sink (processes cannot share one output file or stream)"
        )
    shards = sub_shards(settings.shard_spec, workers)
    argv = sys.argv[sys.argv.index("export") :] if "export" in sys.argv else ["export"]
    _logger.info("exporting with %d worker processes (shards %s)", workers, ", ".join(shards))
    total, code = run_workers(argv, shards)
    _print_report(total, as_json)
    return code


async def _export(
    settings: Settings, dry_run: bool, as_json: bool
) -> tuple[ExportSummary, bool, str | None]:
    stop = asyncio.Event()
    _install_signals(stop)
    metrics = Metrics()
    exporter = build_exporter(settings)
    dead_letter = DeadLetter(settings.dead_letter_path)
    progress = _Progress(enabled=not as_json and sys.stderr.isatty())
    summary = ExportSummary()
    interrupted = False
    error: str | None = None
    try:
        with progress:
            if settings.source == "file":
                assert settings.input is not None
                shipper = Shipper(
                    exporter=exporter,
                    metrics=metrics,
                    dead_letter=dead_letter,
                    stop=stop,
                    deadline_seconds=settings.export_deadline_seconds,
                    retry_max_seconds=settings.retry_backoff_max_seconds,
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
                async with LettaClient.from_settings(settings, stop=stop) as client:
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


def _report(
    settings: Settings,
    summary: ExportSummary,
    seconds: float,
    as_json: bool,
    interrupted: bool,
    error: str | None,
    dry_run: bool,
) -> None:
    data = summary.as_dict() | {
        "sink": "dry-run" if dry_run else wiring.sink_target(settings),
        "seconds": round(seconds, 3),
        "interrupted": interrupted,
        "error": error,
        "dead_letter_file": str(settings.dead_letter_path),
    }
    _print_report(data, as_json)


def _print_report(data: dict[str, Any], as_json: bool) -> None:
    """The export summary: JSON, or a few lines for a person."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    seconds = float(data["seconds"])
    exported = int(data["exported"])
    rate = exported / seconds if seconds > 0 else 0.0
    workers = f" with {data['workers']} workers" if data.get("workers") else ""
    dead_letter = data["dead_letter_file"]
    lines = [
        f"exported {exported} LLM-call spans and {data['run_spans']} run spans "
        f"to {data['sink']}{workers} in {seconds:.1f}s ({rate:.0f} traces/s)",
    ]
    if data["skipped_other_shards"] and not data.get("workers"):
        lines.append(f"left to other shards: {data['skipped_other_shards']}")
    missing, pending = data["missing_traces"], data["pending_traces"]
    if missing or pending:
        lines.append(
            f"steps without a trace: {missing} (recorded in {dead_letter})"
            + (f", still not written: {pending}" if pending else "")
        )
    invalid, rejected, undelivered = data["invalid"], data["rejected"], data["undelivered"]
    if invalid or rejected or undelivered:
        lines.append(
            f"NOT delivered: {invalid + rejected + undelivered} (invalid {invalid}, rejected by "
            f"the collector {rejected}, undelivered {undelivered}); see {dead_letter}"
        )
        lines.extend(f"  - {failure}" for failure in data["failures"][:20])
    if data.get("error"):
        lines.append(f"error: {data['error']}")
    if data["interrupted"]:
        lines.append(
            "interrupted: the checkpoint holds the last delivered step; run the same "
            "command again to resume"
        )
    click.echo("\n".join(lines))


@app.command(epilog=_EPILOG_CONVERT)
@click.argument(
    "input_path", metavar="INPUT", default="-", type=click.Path(dir_okay=False, allow_dash=True)
)
@click.option(
    "-o",
    "--output",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="OTLP JSON lines file (default: stdout).",
)
@click.option("--content", type=click.Choice(["none", "full", "raw"]))
@click.option("--redact", "redact_patterns", multiple=True, help="Regex blanked out of content.")
@click.option("--service-name", help="service.name (default letta).")
@click.option("--no-parents", is_flag=True, help="Only the LLM-call spans, no run spans.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
def convert(input_path: str, output: str, no_parents: bool, **flags: Any) -> None:
    """Convert ProviderTraces (JSON or JSON lines, as the API returns them) to OTLP JSON.

    Offline: no network. One ExportTraceServiceRequest per line, the format the Collector's
    file exporter writes and its otlpjsonfile receiver reads.
    """
    with _errors():
        settings = _load({**flags, "log_level": flags.get("log_level") or "WARNING"})
        exporter = OtlpJsonFileExporter(output)
        shipper = Shipper(
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
                    options=ReplayOptions(batch_size=settings.batch_size, parents=not no_parents),
                    dead_letter=False,
                )
            )
        finally:
            exporter.shutdown()
        click.echo(
            f"converted {summary.exported} traces and {summary.run_spans} runs"
            + ("" if output == "-" else f" into {output}")
            + (
                f"; {summary.invalid} invalid records skipped (named above)"
                if summary.invalid
                else ""
            ),
            err=True,
        )
    sys.exit(EXIT_FAILED if summary.invalid else EXIT_OK)


@app.command(epilog=_EPILOG_CHECK)
@_settings_options
def check(**flags: Any) -> None:
    """Validate the configuration, reach Letta and the collector, and say what was found."""
    with _errors():
        settings = _load(flags)
        ok = asyncio.run(_check(settings))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


async def _check(settings: Settings) -> bool:
    click.echo(
        f"ok    config: sink {wiring.sink_target(settings)}, content {settings.content}, "
        f"state {settings.state_path}"
    )
    ok = True
    if settings.source == "letta":
        try:
            async with LettaClient.from_settings(settings) as client:
                found = await client.check()
            click.echo(f"ok    letta: {found}")
        except ExporterError as exc:
            click.echo(f"FAIL  letta: {exc}")
            ok = False
    exporter = build_exporter(settings)
    try:
        from .sink import deliver

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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="letta-otel-exporter")


if __name__ == "__main__":
    main()
