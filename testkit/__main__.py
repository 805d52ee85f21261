"""Command-line entries for the test doubles, for a demo or a test of one's own collector.

``python -m testkit fake-letta`` serves the recorded Letta 0.16.8 fixtures on 127.0.0.1;
``python -m testkit otlp-receiver`` listens for OTLP traces and metrics and prints what arrives.
Both print one ``listening`` line with their addresses on stdout and run until Ctrl-C (SIGINT)
or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from .fake_letta import FakeLetta
from .otlp_receiver import OtlpReceiver, ReceivedPoint, ReceivedSpan

_FIXTURES: Final = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "letta-0.16.8"


def _wait_for_stop() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(0.5):
        pass


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _fake_letta(args: argparse.Namespace, out: TextIO) -> int:
    fixtures = Path(args.fixtures)
    if not fixtures.is_dir():
        print(f"error: no fixtures directory {fixtures}", file=sys.stderr)
        return 2
    letta = FakeLetta.from_fixtures(
        fixtures, flavour=args.flavour, api_key=args.api_key, port=args.port
    )
    try:
        letta.start()
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror})", file=sys.stderr)
        return 1
    try:
        _say(
            out,
            f"fake Letta {args.flavour} listening on {letta.url} "
            f"({len(letta.store)} steps from {fixtures})",
        )
        _wait_for_stop()
    finally:
        letta.stop()
    return 0


def _span_line(span: ReceivedSpan) -> str:
    attributes = span.attributes
    model = attributes.get("gen_ai.request.model", "")
    tokens = (
        attributes.get("gen_ai.usage.input_tokens"),
        attributes.get("gen_ai.usage.output_tokens"),
    )
    usage = f" tokens {tokens[0]}/{tokens[1]}" if any(t is not None for t in tokens) else ""
    return (
        f"span  {span.protocol:4} {span.trace_id}/{span.span_id} {span.name!r}"
        + (f" model={model}" if model else "")
        + usage
    )


def _point_line(point: ReceivedPoint) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
    value = (
        f"count={point.count} sum={point.value:g}"
        if point.kind == "histogram"
        else f"value={point.value:g}"
    )
    return (
        f"point {point.protocol:4} {point.name} {point.kind} {point.temporality} "
        f"{value} {{{labels}}} exemplars={len(point.exemplars)}"
    )


def _otlp_receiver(args: argparse.Namespace, out: TextIO) -> int:
    lock = threading.Lock()

    def print_spans(spans: list[ReceivedSpan]) -> None:
        with lock:
            for span in spans:
                _say(out, _span_line(span))

    def print_points(points: list[ReceivedPoint]) -> None:
        with lock:
            for point in points:
                _say(out, _point_line(point))

    receiver = OtlpReceiver(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_unimplemented=args.no_metrics,
        on_spans=print_spans if args.print else None,
        on_points=print_points if args.print else None,
    )
    try:
        receiver.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        _say(
            out,
            f"OTLP receiver listening on grpc {receiver.grpc_endpoint} "
            f"http {receiver.http_base_endpoint}"
            + (" (metrics: UNIMPLEMENTED / 404)" if args.no_metrics else ""),
        )
        _wait_for_stop()
    finally:
        receiver.stop()
    _say(out, f"received {receiver.span_count} spans, {len(receiver.points())} metric points")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m testkit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    letta = commands.add_parser("fake-letta", help="serve the recorded Letta fixtures")
    letta.add_argument("--port", type=int, default=8283, help="0: a free port (default 8283)")
    letta.add_argument("--flavour", choices=["0.16.8", "cloud"], default="0.16.8")
    letta.add_argument("--fixtures", default=str(_FIXTURES), help="a fixtures directory")
    letta.add_argument("--api-key", default=None, help="require this bearer token")
    receiver = commands.add_parser("otlp-receiver", help="an OTLP receiver that prints")
    receiver.add_argument("--grpc-port", type=int, default=4317, help="0: a free port")
    receiver.add_argument("--http-port", type=int, default=4318, help="0: a free port")
    receiver.add_argument("--print", action="store_true", help="print each span and data point")
    receiver.add_argument(
        "--no-metrics", action="store_true", help="answer metrics like Jaeger (UNIMPLEMENTED/404)"
    )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one test double until Ctrl-C; the exit code."""
    args = _parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if args.command == "fake-letta":
        return _fake_letta(args, stream)
    return _otlp_receiver(args, stream)


if __name__ == "__main__":
    sys.exit(main())
