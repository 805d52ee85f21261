"""Run the benchmark: the real ``letta-otel-exporter export`` against a baseline, same servers.

    .venv/bin/python -m bench.run --traces 10000 --size 20kb --latency-ms 20 --protocol grpc
    .venv/bin/python -m bench.run --suite --json bench-results.json

A case generates a backlog in a fake Letta process, starts a counting OTLP receiver process,
then runs the exporter CLI as a child process with a fresh state file, and the baseline
(``bench/baseline.py``) as another, each measured from outside: CPU seconds (user + system) and
peak RSS come from ``wait4``'s rusage of the child (``ru_maxrss`` is the kernel's high-water
mark, the same figure as ``VmHWM``), traces/s from the child's own timer of its work (imports
excluded for both). The receiver compares what arrived with the expected set of
``(trace_id, span_id)`` pairs: every LLM span and every run span, each exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.backlog import SIZES, BacklogSpec, expected_span_ids
from bench.servers import LettaProcess, ReceiverProcess

__all__ = ["Case", "main", "run_cases"]

_ROOT = Path(__file__).resolve().parent.parent
_BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark configuration (the exporter and, optionally, the baseline)."""

    traces: int = 10_000
    size: str = "20kb"
    latency_ms: float = 0.0
    protocol: str = "grpc"
    flavour: str = "cloud"
    concurrency: int = 16
    batch_size: int = 512
    page_size: int = 200
    baseline: bool = True
    #: traces for the baseline (None: all); it is sequential, so at 20 ms a sample is enough.
    baseline_traces: int | None = None
    #: record the exporter with py-spy into this file (collapsed stacks); figures then include it.
    profile: str | None = None
    #: ``export --workers``: processes side by side, sharing ``concurrency`` between them.
    workers: int = 1

    @property
    def name(self) -> str:
        flavour = "" if self.flavour == "cloud" else f" {self.flavour}"
        workers = f" x{self.workers} workers" if self.workers > 1 else ""
        return (
            f"{self.traces // 1000}k x {self.size} @{self.latency_ms:g}ms {self.protocol}{flavour}"
            f"{workers}"
        )

    def server_key(self) -> tuple[Any, ...]:
        return (self.traces, self.size, self.latency_ms, self.flavour)


@dataclass(slots=True)
class Measured:
    """A child process, measured from outside."""

    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


@dataclass(slots=True)
class Figures:
    """What one program did in one case."""

    program: str
    traces: int
    seconds: float
    traces_per_second: float
    wall_seconds: float
    cpu_seconds: float
    cpu_per_1k: float
    peak_rss_mb: float
    expected_spans: int
    received_unique: int
    lost: int
    duplicates: int
    unexpected: int
    letta_requests: int
    requests_per_trace: float
    max_in_flight: int
    fake_letta_cpu_share: float  # of one core, during the run
    receiver_cpu_share: float
    returncode: int
    error: str = ""


@dataclass(slots=True)
class Result:
    case: Case
    exporter: Figures
    baseline: Figures | None = None
    ratios: dict[str, float] = field(default_factory=dict)


def _vm_hwm_kib(pid: int) -> int:
    """A process's peak RSS (``VmHWM``), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            return [int(child) for child in children.read().split()]
    except (OSError, ValueError):
        return []


def _watch_peak_rss(pid: int, done: threading.Event, peak: list[int]) -> None:
    """Poll ``VmHWM`` of the process and its children (``export --workers``) until it ends.

    Not ``ru_maxrss``: Linux carries the forking parent's peak across ``exec`` into it, so
    after this harness has generated a large backlog every child would report the harness's
    size. ``VmHWM`` belongs to the process's own address space and only grows, so reading it
    every few milliseconds catches the peak.
    """
    while not done.is_set():
        for each in (pid, *_children(pid)):
            peak[0] = max(peak[0], _vm_hwm_kib(each))
        done.wait(0.02)


def measure(command: list[str], *, env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` to its end; CPU from the kernel's rusage of the child (with its own
    children), peak RSS from ``VmHWM`` (see :func:`_watch_peak_rss`)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=_ROOT)
        done, peak = threading.Event(), [0]
        watcher = threading.Thread(
            target=_watch_peak_rss, args=(process.pid, done, peak), daemon=True
        )
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        watcher.join()
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_seconds=wall,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=peak[0] / 1024,  # KiB
            returncode=process.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def _exporter_command(case: Case, letta: LettaProcess, endpoint: str, tmp: Path) -> list[str]:
    profiler = []
    if case.profile:
        profiler = [str(_BIN / "py-spy"), "record", "--rate", "250", "--format", "raw"]
        if case.workers > 1:
            profiler.append("--subprocesses")
        profiler += ["--output", case.profile, "--"]
    return [
        *profiler,
        str(_BIN / "letta-otel-exporter"),
        "export",
        "--letta-url",
        letta.url,
        "--sink",
        "otlp",
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        "grpc" if case.protocol == "grpc" else "http/protobuf",
        "--content",
        "none",
        "--concurrency",
        str(max(1, case.concurrency // case.workers)),  # in flight in all: at most concurrency
        "--workers",
        str(case.workers),
        "--state-path",
        str(tmp / "state.json"),
        "--dead-letter-path",
        str(tmp / "dead-letter.jsonl"),
        "--json",
    ]


def _env(case: Case) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LETTA_"))}
    env["LETTA_EXPORTER_BATCH_SIZE"] = str(case.batch_size)
    env["LETTA_EXPORTER_PAGE_SIZE"] = str(case.page_size)
    env["LETTA_EXPORTER_LOG_LEVEL"] = "WARNING"
    return env


def _figures(
    program: str,
    measured: Measured,
    *,
    traces: int,
    seconds: float,
    expected: set[tuple[bytes, bytes]] | int,
    received: dict[str, Any],
    letta_stats: dict[str, Any],
    letta_cpu: float,
    receiver_cpu: float,
    error: str = "",
) -> Figures:
    ids: set[tuple[bytes, bytes]] = received["ids"]
    if isinstance(expected, set):
        expected_count = len(expected)
        lost = len(expected - ids)
        unexpected = len(ids - expected)
    else:  # the baseline's span ids are random: count them
        expected_count = expected
        lost = max(0, expected - len(ids))
        unexpected = max(0, len(ids) - expected)
    wall = measured.wall_seconds
    return Figures(
        program=program,
        traces=traces,
        seconds=round(seconds, 3),
        traces_per_second=round(traces / seconds, 1) if seconds > 0 else 0.0,
        wall_seconds=round(wall, 3),
        cpu_seconds=round(measured.cpu_seconds, 3),
        cpu_per_1k=round(measured.cpu_seconds / traces * 1000, 4) if traces else 0.0,
        peak_rss_mb=round(measured.peak_rss_mb, 1),
        expected_spans=expected_count,
        received_unique=len(ids),
        lost=lost,
        duplicates=received["duplicates"],
        unexpected=unexpected,
        letta_requests=letta_stats["requests"],
        requests_per_trace=round(letta_stats["requests"] / traces, 3) if traces else 0.0,
        max_in_flight=letta_stats["max_in_flight"],
        fake_letta_cpu_share=round(letta_cpu / wall, 3) if wall else 0.0,
        receiver_cpu_share=round(receiver_cpu / wall, 3) if wall else 0.0,
        returncode=measured.returncode,
        error=error,
    )


def _run_exporter(
    case: Case, letta: LettaProcess, receiver: ReceiverProcess, expected: set[tuple[bytes, bytes]]
) -> Figures:
    receiver.clear()
    letta.reset()
    letta_cpu = letta.stats()["cpu_seconds"]
    receiver_cpu = receiver.received()["cpu_seconds"]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        command = _exporter_command(case, letta, receiver.endpoint(case.protocol), Path(tmp))
        measured = measure(command, env=_env(case))
    stats = letta.stats()
    received = receiver.received()
    error = ""
    try:
        summary = json.loads(measured.stdout)
        traces = int(summary["exported"])
        seconds = float(summary["seconds"])
        if not summary.get("ok", False):
            error = f"summary not ok: {summary.get('failures')}"
    except (ValueError, KeyError, TypeError):
        traces, seconds = 0, measured.wall_seconds
        error = f"exit {measured.returncode}: {measured.stderr.strip()[-2000:]}"
    return _figures(
        "exporter",
        measured,
        traces=traces,
        seconds=seconds,
        expected=expected,
        received=received,
        letta_stats=stats,
        letta_cpu=stats["cpu_seconds"] - letta_cpu,
        receiver_cpu=received["cpu_seconds"] - receiver_cpu,
        error=error,
    )


def _run_baseline(case: Case, letta: LettaProcess, receiver: ReceiverProcess) -> Figures:
    receiver.clear()
    letta.reset()
    letta_cpu = letta.stats()["cpu_seconds"]
    receiver_cpu = receiver.received()["cpu_seconds"]
    limit = case.baseline_traces or case.traces
    command = [
        sys.executable,
        "-m",
        "bench.baseline",
        "--letta-url",
        letta.url,
        "--otlp-endpoint",
        receiver.endpoint(case.protocol),
        "--protocol",
        case.protocol,
        "--limit",
        str(limit),
    ]
    measured = measure(command, env=_env(case))
    stats = letta.stats()
    received = receiver.received()
    error = ""
    try:
        summary = json.loads(measured.stdout.strip().splitlines()[-1])
        traces, seconds = int(summary["exported"]), float(summary["seconds"])
    except (ValueError, KeyError, IndexError):
        traces, seconds = 0, measured.wall_seconds
        error = f"exit {measured.returncode}: {measured.stderr.strip()[-2000:]}"
    return _figures(
        "baseline",
        measured,
        traces=traces,
        seconds=seconds,
        expected=traces,
        received=received,
        letta_stats=stats,
        letta_cpu=stats["cpu_seconds"] - letta_cpu,
        receiver_cpu=received["cpu_seconds"] - receiver_cpu,
        error=error,
    )


def run_cases(cases: list[Case], *, log: Any = print) -> list[Result]:
    """Run every case; servers are shared by the cases with the same backlog and latency."""
    results: list[Result] = []
    with ReceiverProcess() as receiver:
        groups: dict[tuple[Any, ...], list[Case]] = {}
        for case in cases:
            groups.setdefault(case.server_key(), []).append(case)
        for group in groups.values():
            first = group[0]
            spec = BacklogSpec(
                traces=first.traces, size=first.size, latency_ms=first.flavour == "cloud"
            )
            log(f"generating {first.traces} traces of {first.size} ({first.flavour}) ...")
            with LettaProcess(spec, flavour=first.flavour, latency_ms=first.latency_ms) as letta:
                log(f"  generated in {letta.build_seconds:.1f}s; serving at {letta.url}")
                expected = expected_span_ids(letta.backlog)
                for case in group:
                    log(f"  {case.name}: exporter ...")
                    result = Result(case, _run_exporter(case, letta, receiver, expected))
                    if case.baseline:
                        log(f"  {case.name}: baseline ...")
                        result.baseline = _run_baseline(case, letta, receiver)
                        result.ratios = _ratios(result.exporter, result.baseline)
                    results.append(result)
    return results


def _ratios(exporter: Figures, baseline: Figures) -> dict[str, float]:
    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else 0.0

    return {
        "traces_per_second": ratio(exporter.traces_per_second, baseline.traces_per_second),
        "cpu_per_1k": ratio(exporter.cpu_per_1k, baseline.cpu_per_1k),
        "peak_rss_mb": ratio(exporter.peak_rss_mb, baseline.peak_rss_mb),
    }


_COLUMNS = [
    ("case", 30),
    ("program", 8),
    ("traces", 7),
    ("traces/s", 9),
    ("x base", 7),
    ("CPU s/1k", 9),
    ("peak RSS MB", 11),
    ("lost", 5),
    ("dup", 4),
    ("req/trace", 9),
    ("in flight", 9),
    ("fake CPU", 8),
]


def format_table(results: list[Result]) -> str:
    """The results as a plain-text table (one line per program per case)."""
    lines = ["  ".join(name.rjust(width) for name, width in _COLUMNS)]
    for result in results:
        rows = [(result.exporter, result.ratios.get("traces_per_second"))]
        if result.baseline is not None:
            rows.append((result.baseline, None))
        for figures, ratio in rows:
            values = [
                result.case.name,
                figures.program,
                f"{figures.traces}",
                f"{figures.traces_per_second:.0f}",
                f"{ratio:.1f}x" if ratio is not None else "",
                f"{figures.cpu_per_1k:.3f}",
                f"{figures.peak_rss_mb:.1f}",
                f"{figures.lost}",
                f"{figures.duplicates}",
                f"{figures.requests_per_trace:.2f}",
                f"{figures.max_in_flight}",
                f"{figures.fake_letta_cpu_share:.0%}",
            ]
            lines.append("  ".join(v.rjust(w) for v, (_, w) in zip(values, _COLUMNS, strict=True)))
            if figures.error:
                lines.append(f"    error: {figures.error[:500]}")
    return "\n".join(lines)


def suite(traces: int = 10_000, big: int = 100_000) -> list[Case]:
    """The target matrix: 20 KB at 0 and 20 ms, 2 KB and 200 KB, both protocols, 10k/100k RSS."""
    return [
        Case(traces=traces, size="20kb", latency_ms=0, protocol="grpc"),
        Case(traces=traces, size="20kb", latency_ms=0, protocol="grpc", workers=2),
        Case(traces=traces, size="20kb", latency_ms=0, protocol="http"),
        Case(traces=traces, size="20kb", latency_ms=20, protocol="grpc", baseline_traces=2_000),
        Case(traces=traces, size="2kb", latency_ms=0, protocol="grpc"),
        Case(traces=traces, size="200kb", latency_ms=0, protocol="grpc"),
        Case(traces=big, size="20kb", latency_ms=0, protocol="grpc", baseline=False),
        Case(
            traces=2_000,
            size="20kb",
            latency_ms=0,
            protocol="grpc",
            flavour="0.16.8",
            baseline=False,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark letta-otel-exporter export.")
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--size", choices=sorted(SIZES), default="20kb")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--flavour", choices=["cloud", "0.16.8"], default="cloud")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="export --workers")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-traces", type=int, default=None)
    parser.add_argument("--suite", action="store_true", help="run the target matrix")
    parser.add_argument("--suite-big", type=int, default=100_000, help="traces of the RSS case")
    parser.add_argument("--profile", help="py-spy the exporter into this file (raw stacks)")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.suite:
        cases = suite(args.traces, args.suite_big)
    else:
        cases = [
            Case(
                traces=args.traces,
                size=args.size,
                latency_ms=args.latency_ms,
                protocol=args.protocol,
                flavour=args.flavour,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                page_size=args.page_size,
                baseline=not args.no_baseline and args.flavour == "cloud",
                baseline_traces=args.baseline_traces,
                profile=args.profile,
                workers=args.workers,
            )
        ]
    results = run_cases(cases, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(results))
    if args.json_path is not None:
        args.json_path.write_text(json.dumps([_as_json(r) for r in results], indent=2) + "\n")
    lost = any(r.exporter.lost or r.exporter.duplicates or r.exporter.error for r in results)
    return 1 if lost else 0


def _as_json(result: Result) -> dict[str, Any]:
    return {
        "case": asdict(result.case) | {"name": result.case.name},
        "exporter": asdict(result.exporter),
        "baseline": asdict(result.baseline) if result.baseline is not None else None,
        "ratios": result.ratios,
    }


if __name__ == "__main__":
    sys.exit(main())
