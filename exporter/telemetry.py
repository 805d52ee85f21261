"""The exporter's own health: Prometheus metrics, /healthz, /readyz and the dead-letter file.

Kept apart from the pipeline so the worker only calls small methods and tests can read the
numbers back; the registry is per instance (not the process-global one), so several workers in
one test process do not mix their counts.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .errors import ConfigError

__all__ = ["DeadLetter", "HealthServer", "Metrics"]

_logger = logging.getLogger(__name__)

_PREFIX: Final = "letta_exporter"


class Metrics:
    """The counters and gauges the sidecar exposes on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.traces_exported = Counter(
            f"{_PREFIX}_traces_exported", "LLM-call spans accepted by the collector.", registry=r
        )
        self.run_spans_exported = Counter(
            f"{_PREFIX}_run_spans_exported", "invoke_agent run spans accepted.", registry=r
        )
        self.spans_rejected = Counter(
            f"{_PREFIX}_spans_rejected",
            "Spans the collector refused in an OTLP partial_success.",
            registry=r,
        )
        self.traces_failed = Counter(
            f"{_PREFIX}_traces_failed",
            "Traces not delivered, by reason (invalid, rejected, undelivered).",
            ["reason"],
            registry=r,
        )
        self.traces_missing = Counter(
            f"{_PREFIX}_traces_missing",
            "Steps whose trace was still null after the settle time.",
            registry=r,
        )
        self.export_failures = Counter(
            f"{_PREFIX}_export_failures", "Export requests that failed.", registry=r
        )
        self.retries = Counter(
            f"{_PREFIX}_retries", "Retries, by hop (letta, collector).", ["hop"], registry=r
        )
        self.pending_traces = Gauge(
            f"{_PREFIX}_pending_traces",
            "Steps whose trace was not written yet, asked again later.",
            registry=r,
        )
        self.open_runs = Gauge(
            f"{_PREFIX}_open_runs", "Runs whose parent span waits for the run to end.", registry=r
        )
        self.lag_seconds = Gauge(
            f"{_PREFIX}_lag_seconds",
            "Age of the last delivered trace while a backlog remains; 0 when caught up.",
            registry=r,
        )
        self.last_success = Gauge(
            f"{_PREFIX}_last_success_timestamp_seconds",
            "Unix time of the last successful export.",
            registry=r,
        )
        self.last_pass = Gauge(
            f"{_PREFIX}_last_pass_timestamp_seconds",
            "Unix time the last poll pass finished.",
            registry=r,
        )
        # --- the socket source (run --socket) ---------------------------------------------
        self.socket_received = Counter(
            f"{_PREFIX}_socket_records_received",
            "Records Letta pushed to the socket, journaled.",
            registry=r,
        )
        self.socket_received_bytes = Counter(
            f"{_PREFIX}_socket_received_bytes", "Bytes of the records journaled.", registry=r
        )
        self.socket_invalid = Counter(
            f"{_PREFIX}_socket_records_invalid",
            "Socket lines that were not records, by reason (invalid, too_large, timeout, ...).",
            ["reason"],
            registry=r,
        )
        self.socket_refused = Counter(
            f"{_PREFIX}_socket_records_refused",
            "Records refused because the journal was full (Letta does not send them again).",
            registry=r,
        )
        self.journal_depth_records = Gauge(
            f"{_PREFIX}_journal_depth_records",
            "Socket records journaled and not yet delivered.",
            registry=r,
        )
        self.journal_depth_bytes = Gauge(
            f"{_PREFIX}_journal_depth_bytes",
            "Bytes journaled and not yet delivered (refusals start at journal_max_bytes).",
            registry=r,
        )
        self.socket_delivery_seconds = Histogram(
            f"{_PREFIX}_socket_delivery_seconds",
            "Seconds from a socket record's timestamp to the collector's acceptance of its span.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (for tests and the summary); 0 when never set."""
        sample = self.registry.get_sample_value(name, labels or None)
        return sample or 0.0


class DeadLetter:
    """Append-only JSON lines of everything that could not be delivered, with the reason.

    Each line is flushed and fsynced: the file is the record of last resort.

    Args:
        path: the file; created (with its directory) on first write.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        #: Records written to the file.
        self.count = 0
        #: Records that could not be written anywhere (a failure: the exit code says so).
        self.lost = 0
        self._lock = threading.Lock()

    def write(self, reason: str, **fields: Any) -> None:
        """Record one undeliverable item. Never raises: a failure to write is logged."""
        record = {"time": time.time(), "reason": reason, **fields}
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
                self.count += 1
            except OSError as exc:
                self.lost += 1
                _logger.error(
                    "cannot write dead-letter file %s (%s); lost record: %s",
                    self.path,
                    exc.strerror,
                    {k: v for k, v in record.items() if k in ("reason", "step_id", "trace_id")},
                )

    def read(self) -> Iterable[dict[str, Any]]:
        """The records written so far (for tests and operators)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


class HealthServer:
    """/healthz (the worker loop is alive), /readyz (it has completed a pass), /metrics.

    Args:
        host: interface to bind.
        port: TCP port; 0 picks a free one (see ``.port`` after ``start()``).
        metrics: the registry to expose.
        alive: returns True while the worker loop makes progress.
        ready: returns True once the worker can export (a pass completed).
        blocked: why delivery is stopped (a configuration failure the collector keeps
            answering), or None; while it says something /readyz answers 503 with the reason.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        blocked: Callable[[], str | None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._alive = alive
        self._ready = ready
        self._blocked = blocked
        handler = self._handler()
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            # A busy port or an address that is not this machine's: a setting to fix, not a crash.
            reason = exc.strerror or str(exc)
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    "health_host (--health-host / LETTA_EXPORTER_HEALTH_HOST)",
                    f"cannot listen on {host!r}: {reason}",
                ) from None
            raise ConfigError(
                "health_port (--health-port / LETTA_EXPORTER_HEALTH_PORT)",
                f"cannot listen on {host}:{port}: {reason} (0 turns the health server off)",
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, outer._metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = outer._alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif self.path == "/readyz":
                    reason = outer._blocked() if outer._blocked is not None else None
                    if reason is not None:
                        self._send(503, f"not ready: {reason}\n".encode(errors="replace"))
                        return
                    ok = outer._ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds would flood the log

        return Handler
