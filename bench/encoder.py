"""Micro-benchmark: the SDK's ``encode_spans`` against :class:`exporter.sink._encode.SpanEncoder`.

The spans are the recorded step fixtures converted as the exporter converts them, each copy with
fresh ids and times (as in the bench backlog), in batches of 512 like the worker's: so the
per-span ids and timestamps miss the encoder's cache and the repeated attributes hit it, as in a
real export. Both encoders produce the request bytes (the SDK's: ``SerializeToString()``
included, since that is what is sent), and the bytes are checked equal.

```sh
.venv/bin/python -m bench.encoder --spans 5120 --content none
```
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from exporter.convert import ConvertOptions, TraceContext, build_resource, convert_trace
from exporter.models import ProviderTrace, Step, StepMetrics, parse_record, parse_trace_body
from exporter.sink._encode import SpanEncoder

STEPS: Final = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "letta-0.16.8" / "steps"
)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def build_spans(count: int, content: str, *, seed: int = 0) -> list[ReadableSpan]:
    """``count`` converted LLM spans, the step fixtures in turn with fresh ids and times."""
    rng = random.Random(seed)
    shapes = [json.loads(p.read_bytes()) for p in sorted(STEPS.glob("*.json"))]
    shapes = [s for s in shapes if s.get("trace")]
    options = ConvertOptions(content=content)  # type: ignore[arg-type]
    resource = build_resource()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    spans: list[ReadableSpan] = []
    run_id = ""
    for index in range(count):
        shape = shapes[index % len(shapes)]
        if index % 2 == 0:
            run_id = f"run-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        step_id = f"step-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        ids = {"id": step_id, "run_id": run_id}
        step: dict[str, Any] = dict(shape["step"], **ids, created_at=_iso(when))
        metrics: dict[str, Any] = dict(shape.get("metrics") or {}, **ids)
        trace_fields = {
            "id": f"provider_trace-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
            "step_id": step_id,
            "run_id": run_id,
            "created_at": _iso(when + timedelta(milliseconds=5)),
            "updated_at": _iso(when + timedelta(milliseconds=6)),
        }
        trace: dict[str, Any] = dict(shape["trace"], **trace_fields)
        parsed: ProviderTrace | None = parse_trace_body(json.dumps(trace))
        assert parsed is not None
        context = TraceContext(
            step=parse_record(Step, json.dumps(step)),
            metrics=parse_record(StepMetrics, json.dumps(metrics))
            if shape.get("metrics")
            else None,
        )
        spans.append(convert_trace(parsed, context, options=options, resource=resource))
        when += timedelta(milliseconds=10)
    return spans


def _time(
    encode: Callable[[Sequence[ReadableSpan]], bytes], batches: list[list[ReadableSpan]]
) -> float:
    start = time.perf_counter()
    for batch in batches:
        encode(batch)
    return time.perf_counter() - start


def main() -> None:
    """Print µs per span for both encoders (best of ``--repeat``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=5120)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--content", choices=("none", "full", "raw"), default="none")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    spans = build_spans(args.spans, args.content)
    batches = [spans[i : i + args.batch] for i in range(0, len(spans), args.batch)]
    attributes = sum(len(s.attributes or {}) for s in spans) / len(spans)
    fast = SpanEncoder()
    for batch in batches:
        if fast.encode_fast(batch) != encode_spans(batch).SerializeToString():
            raise SystemExit("the encoders disagree")

    def sdk(batch: Sequence[ReadableSpan]) -> bytes:
        return encode_spans(batch).SerializeToString()

    results = {}
    for name, encode in (("encode_spans", sdk), ("SpanEncoder", SpanEncoder().encode)):
        best = min(_time(encode, batches) for _ in range(args.repeat))
        results[name] = best / len(spans) * 1e6
    print(
        f"{len(spans)} spans ({attributes:.0f} attributes each, content {args.content}), "
        f"batches of {args.batch}, best of {args.repeat}:"
    )
    for name, micros in results.items():
        print(
            f"  {name:13} {micros:7.1f} µs/span  ({micros * args.batch / 1000:6.1f} ms per batch)"
        )
    print(f"  speed-up      {results['encode_spans'] / results['SpanEncoder']:7.1f}x")


if __name__ == "__main__":
    main()
