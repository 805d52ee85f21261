"""Benchmark of the socket path: Letta-style pushes -> listener -> journal -> spans -> OTLP gRPC.

    .venv/bin/python -m bench.socket                       # the target matrix
    .venv/bin/python -m bench.socket --rate 2000 --records 20000 --size 20kb

Three processes besides this one, all on this machine:

* a **sender** that sends records the way Letta's socket backend does (one connection per record:
  connect, ``sendall(json.dumps(record) + "\\n")``, close), paced to ``--rate`` records/s from a
  few threads, each record's ``timestamp`` taken just before its connection, as Letta does;
* the **pipeline**: the sidecar's socket worker as ``run --socket`` builds it without a Letta
  API: :class:`~exporter.source.SocketSource` (listener and journal, fsync in batches on the real
  disk) driven by the real :class:`~exporter.worker.Worker` (intake and conversion, content
  ``none``; the shipper over :class:`~exporter.sink.OtlpGrpcExporter`; a checkpoint save after
  each delivered batch, then the journal trimmed to it);
* a counting :class:`testkit.OtlpReceiver` (gRPC), which says which span ids arrived.

Figures:

* latency: from the record's ``timestamp`` to the receiver's acceptance (the export call
  returning OK), p50 / p99 / max;
* lost: records sent minus distinct spans the receiver holds (duplicates counted apart);
* CPU per record: the pipeline process's user + system seconds over the run / records;
* peak RSS of the pipeline process (``VmHWM``), sampled over the run to show it stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.backlog import SIZES, sized_request
from bench.servers import ReceiverProcess

__all__ = ["Case", "main", "run_case"]

_ROOT = Path(__file__).resolve().parent.parent
_RECORDS = _ROOT / "tests" / "fixtures" / "letta-0.16.8" / "socket" / "records.ndjson"
_ID = "provider_trace-{:08x}-0000-4000-8000-000000000000"
_ID_MARK = "provider_trace-ID"
_TS_MARK = "TIMESTAMP-MARK"


@dataclass(frozen=True, slots=True)
class Case:
    """One run: ``records`` records of about ``size`` sent at ``rate`` records/s."""

    rate: float = 200.0
    records: int = 2000
    size: str = "20kb"
    batch: int = 512
    sender_threads: int = 4
    commit_delay_ms: float = 5.0
    reception_thread: bool = True


@dataclass(frozen=True, slots=True)
class Result:
    case: Case
    sent: int
    send_seconds: float
    achieved_rate: float
    received: int
    delivered: int
    unique_at_receiver: int
    duplicates: int
    lost: int
    invalid: int
    refused: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float
    cpu_us_per_record: float
    peak_rss_mb: float
    rss_samples_mb: list[tuple[int, float]]
    drain_seconds: float
    load_average: tuple[float, float, float]

    @property
    def sustained(self) -> bool:
        """All delivered, nothing lost, the sender held its rate and the pipeline kept up."""
        return (
            self.lost == 0
            and self.refused == 0
            and self.achieved_rate >= 0.95 * self.case.rate
            and self.drain_seconds < 2.0
        )


# ------------------------------------------------------------------------------- records
def record_template(size: str) -> tuple[bytes, bytes, bytes]:
    """The bytes of one record split around its id and its timestamp (filled in per send)."""
    base = json.loads(_RECORDS.read_text().splitlines()[1])  # OpenAI, plain, non-streaming
    base["request"] = sized_request(base["request"], SIZES[size])
    base["provider_trace_id"] = _ID_MARK
    base["timestamp"] = _TS_MARK
    text = json.dumps(base, default=str) + "\n"
    head, rest = text.split(_ID_MARK)
    middle, tail = rest.split(_TS_MARK)
    return head.encode(), middle.encode(), tail.encode()


# ------------------------------------------------------------------------------- sender
def _sender(conn: Connection, path: str, case: Case) -> None:
    head, middle, tail = record_template(case.size)
    conn.send("ready")
    conn.recv()  # go
    start = time.monotonic() + 0.05
    sent = [0] * case.sender_threads
    errors = [0] * case.sender_threads

    def run(k: int) -> None:
        for n in range(k, case.records, case.sender_threads):
            due = start + n / case.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = datetime.now(UTC).isoformat()
            payload = b"".join((head, _ID.format(n).encode(), middle, stamp.encode(), tail))
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(60.0)
                    sock.connect(path)
                    sock.sendall(payload)
                sent[k] += 1
            except OSError:
                errors[k] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(case.sender_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    conn.send({"sent": sum(sent), "errors": sum(errors), "seconds": elapsed})


# ------------------------------------------------------------------------------- pipeline
def _vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _pipeline(conn: Connection, path: str, journal_dir: str, endpoint: str, case: Case) -> None:
    """The sidecar's socket worker as ``run --socket`` builds it (no Letta API): the real
    :class:`~exporter.worker.Worker` over :class:`~exporter.source.SocketSource`, its shipper,
    checkpoint saves and the journal trim after each save (:class:`SocketDelivered`)."""
    from exporter import wiring
    from exporter.journal import JournalOptions
    from exporter.settings import Settings
    from exporter.sidecar import MetricSocketStats, SocketDelivered
    from exporter.source import SocketSource
    from exporter.telemetry import DeadLetter, Metrics

    work = Path(journal_dir).parent
    settings = Settings.load(
        otlp_endpoint=endpoint,
        otlp_protocol="grpc",
        otlp_insecure=True,
        content="none",
        batch_size=case.batch,
        state_path=work / "state.json",
        dead_letter_path=work / "dead.jsonl",
    )

    async def main() -> dict[str, Any]:
        metrics = Metrics()
        stop = asyncio.Event()
        source = SocketSource(
            path,
            journal_dir,
            journal=JournalOptions(commit_delay=case.commit_delay_ms / 1000),
            stats=MetricSocketStats(metrics),
            reception_thread=case.reception_thread,
        )
        await source.start()
        exporter = wiring.build_exporter(settings)
        latencies: array[float] = array("d")
        samples: list[tuple[int, float]] = []
        counts = {"delivered": 0}
        trim = SocketDelivered(source, None, metrics)

        async def accepted(batch: Any) -> None:
            await trim.accepted(batch)
            now = time.time()
            latencies.extend(now - span.end_time / 1e9 for span in batch.spans)
            before = counts["delivered"]
            counts["delivered"] += len(batch.spans)
            if counts["delivered"] // 10_000 != before // 10_000:
                samples.append((counts["delivered"], _vm_hwm_mb()))

        worker = wiring.source_worker(
            settings,
            source=source,
            exporter=exporter,
            stop=stop,
            one_shot=False,
            metrics=metrics,
            dead_letter=DeadLetter(settings.dead_letter_path),
            run_idle_seconds=wiring.SOCKET_RUN_IDLE_SECONDS,
            on_accepted=accepted,
            after_delivery=trim,
        )
        conn.send("ready")
        cpu0 = os.times()
        running = asyncio.get_running_loop().create_task(worker.run_forever(poll_seconds=1.0))
        while not (conn.poll() and conn.recv() == "sent"):  # noqa: ASYNC110 - a pipe
            await asyncio.sleep(0.05)
        # The sender is done: wait (bounded) for the pipeline to drain.
        drain_start = time.monotonic()
        invalid = lambda: sum(source.stats.invalid.values())  # noqa: E731
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                _until(lambda: counts["delivered"] >= source.stats.received - invalid()), 60
            )
        drain = time.monotonic() - drain_start
        cpu1 = os.times()
        stop.set()
        await source.stop_listening()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running, 30)
        await source.aclose()
        exporter.shutdown()
        ordered = sorted(latencies)
        return {
            "received": source.stats.received,
            "delivered": counts["delivered"],
            "invalid": invalid(),
            "refused": source.stats.refused,
            "p50_ms": _percentile(ordered, 0.50),
            "p99_ms": _percentile(ordered, 0.99),
            "max_ms": ordered[-1] * 1000 if ordered else 0.0,
            "cpu_seconds": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "peak_rss_mb": _vm_hwm_mb(),
            "rss_samples_mb": samples,
            "drain_seconds": drain,
        }

    profile_to = os.environ.get("BENCH_SOCKET_PROFILE")
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        figures = profiler.runcall(asyncio.run, main())
        profiler.dump_stats(profile_to)
        conn.send(figures)
    else:
        conn.send(asyncio.run(main()))


def _percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted seconds, in milliseconds (nearest rank)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _until(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 - a counter, polled in a benchmark
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------- driver
def run_case(case: Case) -> Result:
    """Run one case with fresh processes, socket and journal."""
    from exporter.convert import span_id_for, trace_id_for_run

    ctx = mp.get_context("spawn")
    # /tmp is on the same disk as the project here (ext4): the journal's fsyncs are real.
    work = Path(tempfile.mkdtemp(prefix="bsk", dir="/tmp"))
    journal_dir = work / "journal"
    path = str(work / "letta.sock")
    run_id = json.loads(_RECORDS.read_text().splitlines()[1])["run_id"]
    try:
        with ReceiverProcess(workers=4) as receiver:
            pipe, pipe_child = ctx.Pipe()
            pipeline = ctx.Process(
                target=_pipeline,
                args=(pipe_child, path, str(journal_dir), receiver.grpc_endpoint, case),
            )
            pipeline.start()
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("the pipeline did not start")
            send, send_child = ctx.Pipe()
            sender = ctx.Process(target=_sender, args=(send_child, path, case))
            sender.start()
            if not send.poll(60) or send.recv() != "ready":
                raise RuntimeError("the sender did not start")
            send.send("go")
            sent = send.recv()
            sender.join()
            pipe.send("sent")
            figures = pipe.recv()
            pipeline.join(30)
            got = receiver.received()
        trace_id = trace_id_for_run(run_id).to_bytes(16, "big")
        expected = {
            (trace_id, span_id_for(_ID.format(n)).to_bytes(8, "big")) for n in range(case.records)
        }
        ids = got["ids"]
        return Result(
            case=case,
            sent=sent["sent"],
            send_seconds=sent["seconds"],
            achieved_rate=sent["sent"] / sent["seconds"] if sent["seconds"] else 0.0,
            received=figures["received"],
            delivered=figures["delivered"],
            unique_at_receiver=len(ids & expected),
            duplicates=got["duplicates"],
            lost=len(expected - ids),
            invalid=figures["invalid"],
            refused=figures["refused"],
            p50_ms=figures["p50_ms"],
            p99_ms=figures["p99_ms"],
            max_ms=figures["max_ms"],
            cpu_seconds=figures["cpu_seconds"],
            cpu_us_per_record=figures["cpu_seconds"] / max(1, figures["delivered"]) * 1e6,
            peak_rss_mb=figures["peak_rss_mb"],
            rss_samples_mb=figures["rss_samples_mb"],
            drain_seconds=figures["drain_seconds"],
            load_average=os.getloadavg(),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(result: Result) -> str:
    case = result.case
    rss = ", ".join(f"{n // 1000}k: {mb:.0f}" for n, mb in result.rss_samples_mb)
    return (
        f"{case.rate:>6.0f}/s x {case.records:>6} {case.size}: sent {result.sent} "
        f"({result.achieved_rate:.0f}/s), delivered {result.delivered}, lost {result.lost}, "
        f"dup {result.duplicates}, refused {result.refused}; latency p50 {result.p50_ms:.1f} ms "
        f"p99 {result.p99_ms:.1f} ms max {result.max_ms:.1f} ms; CPU "
        f"{result.cpu_us_per_record:.0f} us/record; peak RSS {result.peak_rss_mb:.0f} MB"
        f"{f' (MB at {rss})' if rss else ''}; drain {result.drain_seconds:.2f} s; "
        f"load {result.load_average[0]:.1f}; "
        f"{'' if case.reception_thread else 'reception on the pipeline loop; '}"
        f"{'sustained' if result.sustained else 'NOT sustained'}"
    )


SUITE = (
    Case(rate=200, records=4000),
    Case(rate=1000, records=10_000),
    Case(rate=2000, records=20_000),
    Case(rate=3000, records=30_000),
    Case(rate=4000, records=40_000),
    Case(rate=2000, records=100_000),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--size", choices=sorted(SIZES), default="20kb")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--no-reception-thread",
        action="store_true",
        help="run the listener and the journal on the pipeline's own event loop",
    )
    args = parser.parse_args(argv)
    cases = (
        [
            Case(
                rate=args.rate,
                records=args.records,
                size=args.size,
                batch=args.batch,
                reception_thread=not args.no_reception_thread,
            )
        ]
        if args.rate
        else list(SUITE)
    )
    results = []
    for case in cases:
        result = run_case(case)
        print(describe(result), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**asdict(r), "sustained": r.sustained} for r in results], indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
