"""Benchmark of ``export --source postgres`` as users run it: the CLI, the worker, OTLP gRPC.

    .venv/bin/python -m bench.postgres_worker --traces 20000 --workers 1 2
    .venv/bin/python -m bench.postgres_worker --traces 100000 --reuse letta_bench_100k

Where :mod:`bench.postgres` measures the source's read, conversion and encoding in a loop of its
own, this runs the whole command in a subprocess (``letta-otel-exporter export --source
postgres --json``, ``--workers N``) against a synthetic database made the same way
(:func:`bench.postgres.generate`: Letta's schema from the recorded dump, 20 KB bodies, content
``none``) and a counting OTLP receiver process: the worker's intake, batching, the shipper's
gRPC deliveries and the checkpoint saves are all in the figure. Figures: traces/s (exported over
the command's wall time, start-up included), the command's CPU (its processes' user + system
time) per 1,000 traces, lost (rows - distinct span ids at the receiver) and duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.postgres import drop_database, prepared_database
from bench.servers import ReceiverProcess

ROOT = Path(__file__).resolve().parent.parent


def run_export(dsn: str, endpoint: str, workers: int) -> dict[str, Any]:
    """One ``export --source postgres`` in a subprocess; its summary and costs."""
    with tempfile.TemporaryDirectory(prefix="bpw") as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
        env.update(
            LETTA_EXPORTER_DATABASE_URL=dsn,
            LETTA_EXPORTER_STATE_PATH=str(Path(work) / "state.json"),
            LETTA_EXPORTER_DEAD_LETTER_PATH=str(Path(work) / "dead.jsonl"),
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            LETTA_EXPORTER_METRICS="false",
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        args = [sys.executable, "-m", "exporter.cli", "export", "--source", "postgres", "--json"]
        if workers > 1:
            args += ["--workers", str(workers)]
        proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    exported = int(report["exported"])
    return {
        "workers": workers,
        "exported": exported,
        "run_spans": int(report["run_spans"]),
        "wall_s": round(wall, 2),
        "traces_per_s": round(exported / wall) if wall else 0,
        "cpu_s_per_1k": round(cpu / max(1, exported) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--size", default="20kb")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--reuse", help="database name to keep (made once with --traces rows, then reused)"
    )
    args = parser.parse_args(argv)

    name = args.reuse or f"letta_bench_{secrets.token_hex(4)}"
    results = []
    try:
        dsn = prepared_database(name, args.traces, args.size)
        rows = args.traces
        for workers in args.workers:
            with ReceiverProcess(workers=4) as receiver:
                figures = run_export(dsn, receiver.endpoint("grpc"), workers)
                got = receiver.received()
            figures |= {
                "rows": rows,
                "lost": rows - figures["exported"],
                "duplicates": got["duplicates"],
                "load_average": round(os.getloadavg()[0], 1),
            }
            results.append(figures)
            print(
                f"export --source postgres, {workers} worker(s): {figures['exported']} of "
                f"{rows} traces (+{figures['run_spans']} run spans) in {figures['wall_s']} s "
                f"= {figures['traces_per_s']} traces/s; CPU {figures['cpu_s_per_1k']} s per "
                f"1,000; lost {figures['lost']}, dup {figures['duplicates']}; "
                f"load {figures['load_average']}",
                flush=True,
            )
    finally:
        if not args.reuse:
            drop_database(name)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
