"""The ``letta-otel-exporter`` command: parse flags, build Settings, wire the stages, report.

Exit codes: 0 everything delivered (or a clean shutdown on SIGTERM/SIGINT), 1 some traces were
not delivered (they are named) or a stage failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from . import __version__
from .errors import ConfigError, ExporterError
from .logs import setup_logging
from .parallel import fork_workers, run_workers, sub_shards
from .settings import Settings

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
  # every trace Letta's database holds (a read-only role; the URL from the environment)
  LETTA_EXPORTER_DATABASE_URL=postgresql://reader:...@db:5432/letta \\
    letta-otel-exporter export --source postgres --since 30d
"""

_EPILOG_CONVERT = """\b
Examples:
  letta-otel-exporter convert trace.json                  # OTLP JSON on stdout
  curl -s $LETTA/v1/steps/$STEP/trace | letta-otel-exporter convert - -o spans.jsonl
  letta-otel-exporter convert dump.jsonl --content full -o spans.jsonl
"""

_EPILOG_REPLAY = """\b
Examples:
  # send again what the collector refused, to the collector configured as for export
  letta-otel-exporter replay letta-otel-exporter.dead-letter.jsonl \\
    --otlp-endpoint http://localhost:4318
  # the same, with a JSON report (entries delivered, kept and why)
  letta-otel-exporter replay /var/lib/exporter/dead-letter.jsonl --json
\b
Exit codes: 0 every entry delivered (the file is left empty), 1 entries kept (a step that
never had a trace, a batch refused again, the collector unreachable), 2 bad usage or setup.
"""

_EPILOG_CHECK = """\b
Examples:
  letta-otel-exporter check
  letta-otel-exporter check --config /etc/letta-otel-exporter/exporter.toml
  # the sidecar's socket: accepting connections, and when Letta last wrote to it
  letta-otel-exporter check --socket /var/run/telemetry/telemetry.sock
  # Letta's database: reachable, rows in the window, the index that would help
  LETTA_EXPORTER_DATABASE_URL=postgresql://reader:...@db:5432/letta \\
    LETTA_EXPORTER_SINCE=7d letta-otel-exporter check --source postgres
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
            "--otlp-certificate",
            type=click.Path(dir_okay=False, path_type=Path),
            help="PEM CA certificates for a TLS collector ($OTEL_EXPORTER_OTLP_CERTIFICATE).",
        ),
        click.option(
            "--otlp-insecure/--otlp-secure",
            default=None,
            help="For an endpoint given as host:port (no scheme): plain text (insecure) or TLS "
            "(secure, the default). http:// is always plain and https:// always TLS.",
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
        click.option(
            "--database-url",
            help="Letta's PostgreSQL for --source postgres ($LETTA_EXPORTER_DATABASE_URL, else "
            "$LETTA_PG_URI): postgresql://user:password@host:5432/letta. Prefer the environment: "
            "a flag is visible in the process list.",
        ),
        click.option(
            "--prices-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Your own prices (TOML or JSON, USD per million tokens), before the library's.",
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
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], False),
            help="Log level (default INFO).",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            help="Logs as text, or JSON lines for a log pipeline.",
        ),
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


def _socket_options(*, run: bool) -> Callable[[F], F]:
    """``--socket`` and its journal: the listener's options on ``run``; ``check`` only looks."""

    def decorate(func: F) -> F:
        options = [
            click.option(
                "--socket",
                type=click.Path(dir_okay=False, path_type=Path),
                help=(
                    "Also listen on this Unix socket for the traces Letta pushes (Letta's "
                    "TELEMETRY_SOCKET, backend socket)."
                    if run
                    else "Report the listener on this Unix socket and when a record last came."
                ),
            ),
            click.option(
                "--journal-dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Journal of received socket records (default: <state-path>.journal).",
            ),
        ]
        if run:
            options += [
                click.option(
                    "--socket-mode", help="The socket file's permission bits, octal (default 0660)."
                ),
                click.option(
                    "--journal-max-bytes",
                    help="Unshipped bytes the journal holds at most (default 2GiB; 512MiB ...).",
                ),
            ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _metrics_options(func: F) -> F:
    options = [
        click.option(
            "--metrics/--no-metrics",
            default=None,
            help="GenAI metrics over OTLP to the traces' collector (default: on with the OTLP "
            "sink, off with a file or the console).",
        ),
        click.option(
            "--metrics-temporality",
            type=click.Choice(["cumulative", "delta", "lowmemory"], False),
            help="Metric temporality ($OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE).",
        ),
        click.option(
            "--metrics-agent-attribute/--no-metrics-agent-attribute",
            default=None,
            help="Add the agent to every metric series (one series per agent; default off).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(flags: dict[str, Any]) -> Settings:
    if flags.get("database_url") is not None:
        if flags.get("source") not in (None, "postgres"):
            raise click.UsageError(
                f"--database-url reads Letta's database: it goes with --source postgres, "
                f"not {flags['source']}"
            )
        flags["source"] = "postgres"  # --database-url means the database source
    config_file = flags.pop("config_file", None)
    settings = Settings.load(config_file=config_file, **flags)
    setup_logging(settings.log_level, settings.log_format)
    return settings


@contextlib.contextmanager
def _errors(*, as_json: bool = False) -> Iterator[None]:
    """Turn the exporter's errors into one line on stderr and an exit code: no tracebacks.

    With ``as_json`` the JSON summary is printed too, its ``error`` filled, so a script reading
    stdout learns what went wrong.
    """
    try:
        yield
    except ConfigError as exc:
        click.echo(f"ConfigError: {exc}", err=True)
        if as_json:
            click.echo(json.dumps(_failed_report(f"ConfigError: {exc}"), indent=2))
        sys.exit(EXIT_USAGE)
    except ExporterError as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        if as_json:
            click.echo(json.dumps(_failed_report(f"{type(exc).__name__}: {exc}"), indent=2))
        # A database that refuses the credentials or lacks a table is configuration too.
        sys.exit(EXIT_USAGE if getattr(exc, "configuration", False) else EXIT_FAILED)


def _failed_report(error: str) -> dict[str, Any]:
    """The JSON summary of an export that could not start."""
    counts = ("discovered", "exported", "run_spans", "missing_traces", "pending_traces")
    failed = ("invalid", "rejected", "undelivered", "skipped_other_shards")
    return {
        **dict.fromkeys(counts + failed, 0),
        "failures": [],
        "ok": False,
        "interrupted": False,
        "error": error,
        "warnings": [],
        "dead_letter_file": None,
    }


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
@_socket_options(run=True)
@_metrics_options
@click.option(
    "--source",
    type=click.Choice(["letta", "postgres"]),
    help="Poll the Letta API (default) or Letta's PostgreSQL for new traces.",
)
@click.option("--poll-interval", "poll_interval_seconds", type=float, help="Seconds between polls.")
@click.option("--health-host", help="Address of /healthz, /readyz and /metrics.")
@click.option("--health-port", type=int, help="Port of /healthz, /readyz and /metrics (0: off).")
@click.option(
    "--shutdown-timeout",
    "shutdown_timeout_seconds",
    type=float,
    help="Seconds SIGTERM waits for in-flight work before stopping it (default 30).",
)
def run(**flags: Any) -> None:
    """Run as a sidecar: poll Letta, export new traces, checkpoint, until SIGTERM."""
    with _errors():
        settings = _load(flags)
        from . import commands

        code = commands.run(settings)
    sys.exit(code)


@app.command(epilog=_EPILOG_EXPORT)
@_settings_options
@_filter_options
@click.option("--until", help="Steps created before: ISO time or relative (default: now).")
@click.option("--limit", type=int, help="Export at most this many traces.")
@click.option("--dry-run", is_flag=True, help="Fetch and convert, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_metrics_options
@click.option(
    "--source",
    type=click.Choice(["letta", "file", "postgres"]),
    help="Letta API (default), a file (--input), or Letta's PostgreSQL (--database-url).",
)
@click.option(
    "--input",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="ProviderTraces file (JSON or JSON lines; - for stdin) for --source file.",
)
@click.option(
    "--export-deadline",
    "export_deadline_seconds",
    type=float,
    help="Seconds a failing collector is retried before the export gives up (default 120).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes exporting side by side, each a shard of the steps (a backfill on a "
    "machine with several cores; needs the Letta source and the OTLP sink).",
)
@click.option(
    "--shift-to-now",
    is_flag=True,
    help="--source file: move every time forward by one offset so the newest trace ends now "
    "(a sample from months ago shows in a backend's default last-hours view).",
)
def export(dry_run: bool, as_json: bool, workers: int, shift_to_now: bool, **flags: Any) -> None:
    """Export once (a backfill): every trace in the window, then exit with a summary."""
    if flags.get("input") is not None:
        if flags.get("source") in ("letta", "postgres") or flags.get("database_url"):
            source = flags.get("source") or "postgres"
            raise click.UsageError(
                f"--input reads a file: it goes with --source file, not {source}"
            )
        flags["source"] = "file"  # --input means the file source
        if str(flags["input"]) == "-" and sys.stdin.isatty():
            raise click.UsageError(
                "--input -: stdin is a terminal; pipe the traces in, or name a file"
            )
    if shift_to_now and flags.get("source") != "file":
        raise click.UsageError("--shift-to-now applies to --input FILE only")
    with _errors(as_json=as_json):
        settings = _load(flags)
        if workers > 1:
            sys.exit(_export_in_parallel(settings, workers, as_json, dry_run))
        from . import commands

        data, code = commands.export(
            settings, dry_run=dry_run, as_json=as_json, shift_to_now=shift_to_now
        )
        _print_report(data, as_json)
    sys.exit(code)


def _export_in_parallel(settings: Settings, workers: int, as_json: bool, dry_run: bool) -> int:
    if settings.source == "file":
        raise ConfigError(
            "--workers", "needs the Letta API or its database (a file is read by one process)"
        )
    if settings.effective_sink != "otlp":
        raise ConfigError(
            "--workers", "needs the OTLP sink (processes cannot share one output file or stream)"
        )
    shards = sub_shards(settings.shard_spec, workers)
    _logger.info("exporting with %d worker processes (shards %s)", workers, ", ".join(shards))
    if hasattr(os, "fork"):
        from . import commands  # imported once, before forking: the workers share it

        def work(shard: str) -> tuple[dict[str, Any], int]:
            return commands.export(
                settings.model_copy(update={"shard": shard}), dry_run=dry_run, as_json=True
            )

        total, code = fork_workers(work, shards)
    else:
        argv = sys.argv[sys.argv.index("export") :] if "export" in sys.argv else ["export"]
        total, code = run_workers(argv, shards)
    _print_report(total, as_json)
    return code


def _print_report(data: dict[str, Any], as_json: bool) -> None:
    """The export summary: JSON, or a few lines for a person."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    seconds = float(data["seconds"])
    exported = int(data["exported"])
    rate = exported / seconds if seconds > 0 else 0.0
    workers = f" with {data['workers']} workers" if data.get("workers") else ""
    dead_letter = data.get("dead_letter_file")
    recorded = f" (recorded in {dead_letter})" if dead_letter else ""
    lines = [
        f"exported {exported} LLM-call spans and {data['run_spans']} run spans "
        f"to {data['sink']}{workers} in {seconds:.1f}s ({rate:.0f} traces/s)",
    ]
    if data.get("appended_to"):
        lines.append(
            f"appended to {data['appended_to']}, which already held spans (spans keep their ids, "
            "so backends deduplicate; remove the file first for a fresh one)"
        )
    if data["skipped_other_shards"] and not data.get("workers"):
        lines.append(f"left to other shards: {data['skipped_other_shards']}")
    missing, pending = data["missing_traces"], data["pending_traces"]
    if missing or pending:
        lines.append(
            f"steps without a trace: {missing}{recorded}"
            + (f", still not written: {pending}" if pending else "")
        )
    invalid, rejected, undelivered = data["invalid"], data["rejected"], data["undelivered"]
    if invalid or rejected or undelivered:
        lines.append(
            f"NOT delivered: {invalid + rejected + undelivered} (invalid {invalid}, rejected by "
            f"the collector {rejected}, undelivered {undelivered})"
            + (f"; see {dead_letter}" if dead_letter else "")
        )
        lines.extend(f"  - {failure}" for failure in data["failures"][:20])
    if data.get("dead_letter_lost"):
        lines.append(
            f"LOST: {data['dead_letter_lost']} records could not be written to the dead-letter "
            "file either (named in the log above); fix --dead-letter-path"
        )
    if data.get("error") and data["error"] not in data["failures"]:
        lines.append(f"error: {data['error']}")
    if data["interrupted"]:
        lines.append(
            "interrupted: the checkpoint holds the last delivered step; run the same "
            "command again to resume"
        )
    click.echo("\n".join(lines))


@app.command(epilog=_EPILOG_CONVERT)
@click.argument(
    "input_path",
    metavar="INPUT",
    required=False,
    type=click.Path(dir_okay=False, allow_dash=True),
)
@click.option(
    "-o",
    "--output",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="OTLP JSON lines file (default: stdout).",
)
@click.option(
    "--content",
    type=click.Choice(["none", "full", "raw"]),
    help="Prompt/completion content on spans (default none).",
)
@click.option("--redact", "redact_patterns", multiple=True, help="Regex blanked out of content.")
@click.option("--service-name", help="service.name (default letta).")
@click.option(
    "--prices-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your own prices (TOML or JSON, USD per million tokens), before the library's.",
)
@click.option("--no-parents", is_flag=True, help="Only the LLM-call spans, no run spans.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (default: $LETTA_EXPORTER_CONFIG).",
)
def convert(input_path: str | None, output: str, no_parents: bool, **flags: Any) -> None:
    """Convert ProviderTraces (JSON or JSON lines, as the API returns them) to OTLP JSON.

    Offline: no network. One ExportTraceServiceRequest per line, the format the Collector's
    file exporter writes and its otlpjsonfile receiver reads. INPUT is a file, or - (the
    default when something is piped in) for stdin.
    """
    if input_path is None:
        if sys.stdin.isatty():
            raise click.UsageError("give INPUT: a file of ProviderTraces, or - to read stdin")
        input_path = "-"
    with _errors():
        settings = _load({**flags, "log_level": flags.get("log_level") or "WARNING"})
        from . import commands

        code = commands.convert(settings, input_path, output, parents=not no_parents)
    sys.exit(code)


@app.command(epilog=_EPILOG_REPLAY)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_settings_options
def replay(file: Path, as_json: bool, **flags: Any) -> None:
    """Send a dead-letter file's entries to the collector again, removing each one delivered.

    Batches the collector refused are sent as they were; records that could not be read are
    read and converted again. What cannot be re-sent (a step that never had a trace, a record
    still unreadable, a batch refused again) stays in the file and is named. Running it twice
    sends nothing twice; stopped or killed midway, it loses nothing.
    """
    with _errors():
        settings = _load(flags)
        from .dead_letters import replay_command

        data, code = replay_command(settings, file)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"re-sent {data['delivered']} of {data['entries']} entries ({data['spans']} spans); "
            f"{data['kept']} kept in {file}"
            + (f"; stopped: {data['error']}" if data["error"] else "")
        )
    sys.exit(code)


@app.command(epilog=_EPILOG_CHECK)
@_settings_options
@_socket_options(run=False)
@click.option(
    "--source",
    type=click.Choice(["letta", "postgres"]),
    help="What to check: the Letta API (default) or Letta's PostgreSQL (--database-url).",
)
def check(**flags: Any) -> None:
    """Validate the configuration, reach Letta and the collector, and say what was found."""
    with _errors():
        settings = _load(flags)
        from . import commands

        ok = commands.check(settings)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="letta-otel-exporter")


if __name__ == "__main__":
    main()
