"""``export --workers N``: a backfill split over N processes, one shard of the steps each.

One exporter process is bound by one core (parsing, converting and encoding traces are Python);
a backfill on a machine with more cores runs N workers, each with a sub-shard of the steps
(``--shard i/n`` becomes ``i + n*j / n*N`` for worker ``j``, so an already sharded replica splits
only its own share). Each worker keeps its own checkpoint stream in the shared state file (the
checkpoint locks it), ships each run's parent span only when it owns the run, and reports its
summary; this process forwards SIGTERM/SIGINT to them, adds the summaries up and exits as one
export would.

Workers are forked from this process after the pipeline is imported and before any connection,
thread or event loop exists, so they start at once and share the imported code; where there is
no ``fork``, they are fresh ``letta-otel-exporter export --shard ...`` processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final

__all__ = ["fork_workers", "run_workers", "sub_shards"]

_SUMMED: Final = (
    "discovered",
    "exported",
    "run_spans",
    "missing_traces",
    "pending_traces",
    "invalid",
    "rejected",
    "undelivered",
    "skipped_other_shards",
    "dead_letter_records",
    "dead_letter_lost",
)


def sub_shards(shard: tuple[int, int] | None, workers: int) -> list[str]:
    """The ``--shard`` of each worker: a split of ``shard`` (or of everything) into ``workers``.

    Steps go to shard ``crc32(id) % count``; ``(i + n*j) % n == i``, so the sub-shards of
    ``i/n`` cover exactly the steps of ``i/n``.
    """
    index, count = shard or (0, 1)
    return [f"{index + count * j}/{count * workers}" for j in range(workers)]


def fork_workers(
    work: Callable[[str], tuple[dict[str, Any], int]], shards: Sequence[str]
) -> tuple[dict[str, Any], int]:
    """Run ``work(shard)`` in a forked process per shard; add up the summaries it returns.

    Args:
        work: runs one shard's export and returns its summary (JSON-able) and exit code; it runs
            in the child only.
        shards: one ``i/n`` per worker.
    """
    children: list[tuple[int, int]] = []
    for shard in shards:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            code = 1
            try:
                summary, code = work(shard)
                payload = json.dumps(summary).encode()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
                payload = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
            finally:
                with os.fdopen(write_end, "wb") as out, contextlib.suppress(OSError):
                    out.write(payload)
            os._exit(code)
        os.close(write_end)
        children.append((pid, read_end))

    def forward(signum: int, frame: FrameType | None) -> None:
        for pid, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    outputs: list[str] = []
    codes: list[int] = []
    try:
        for pid, read_end in children:
            with os.fdopen(read_end, "rb") as pipe:
                outputs.append(pipe.read().decode(errors="replace"))
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _combine(outputs, codes)


def run_workers(argv: Sequence[str], shards: Sequence[str]) -> tuple[dict[str, Any], int]:
    """Run ``argv`` (an ``export`` command line) once per shard, in parallel; add up the results.

    Returns:
        The summed JSON summary and the exit code the whole export should end with.
    """
    base = [sys.executable, "-m", "exporter.cli", *argv]
    children = [
        subprocess.Popen(  # noqa: S603 - our own command line, no shell
            [*base, "--shard", shard, "--workers", "1", "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for shard in shards
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        outputs = [child.communicate()[0] for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _combine(outputs, [child.returncode for child in children])


def _combine(outputs: Sequence[str], codes: Sequence[int]) -> tuple[dict[str, Any], int]:
    total: dict[str, Any] = {name: 0 for name in _SUMMED}
    total.update(failures=[], interrupted=False, error=None, seconds=0.0, workers=len(codes))
    for output, code in zip(outputs, codes, strict=True):
        try:
            summary = json.loads(output[output.index("{") :]) if "{" in output else None
        except ValueError:
            summary = None
        if not isinstance(summary, dict) or "exported" not in summary:
            if isinstance(summary, dict) and summary.get("error"):
                total["failures"].append(str(summary["error"]))
            total["failures"].append(f"a worker ended with exit code {code} and no summary")
            total["error"] = total["error"] or "a worker failed (see its messages above)"
            continue
        for name in _SUMMED:
            total[name] += int(summary.get(name) or 0)
        total["failures"].extend(summary.get("failures") or [])
        total["interrupted"] = total["interrupted"] or bool(summary.get("interrupted"))
        total["error"] = total["error"] or summary.get("error")
        total["seconds"] = max(total["seconds"], float(summary.get("seconds") or 0.0))
        total.setdefault("sink", summary.get("sink"))
        total["dead_letter_file"] = total.get("dead_letter_file") or summary.get("dead_letter_file")
        total["warnings"] = [*total.get("warnings", []), *(summary.get("warnings") or [])]
    total["ok"] = (
        not (total["invalid"] or total["rejected"] or total["undelivered"])
        and not total["error"]
        and not total["dead_letter_lost"]
    )
    if any(code == 2 for code in codes):
        return total, 2
    if total["interrupted"]:
        return total, 0
    return total, 0 if total["ok"] and all(code == 0 for code in codes) else 1
