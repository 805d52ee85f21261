"""Micro-benchmark: the cost of the GenAI metrics per delivered span batch.

The spans are the recorded step fixtures converted as the exporter converts them (see
:func:`bench.encoder.build_spans`), in batches of 512 like the worker's. Each batch goes through
``GenAIMetrics.record_delivered`` against the test OTLP receiver on 127.0.0.1, with the ledger on
disk (one append and fsync per batch) and one metrics export per batch (``flush_on_delivery``,
the default), then without the flush (the periodic export only). Figures are CPU time of this
process (the receiver's decoding included).

```sh
.venv/bin/python -m bench.genai_metrics --spans 5120
```
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from exporter.convert import build_resource
from exporter.genai_metrics import GenAIMetrics
from testkit import OtlpReceiver

from .encoder import build_spans


def _run(
    batches: list[list], receiver: OtlpReceiver, ledger: Path, *, flush: bool, protocol: str
) -> tuple[float, int]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    metrics = GenAIMetrics.from_config(
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]
        resource=build_resource(),
        ledger_path=ledger,
        flush_on_delivery=flush,
    )
    counted = 0
    # CPU time, not wall time: the machine may be shared, and the fsync per batch waits on the
    # disk without using the CPU. It includes the receiver decoding the metrics in this process.
    start = time.process_time()
    for batch in batches:
        counted += metrics.record_delivered(batch)
    elapsed = time.process_time() - start
    metrics.shutdown()
    return elapsed, counted


def main() -> None:
    """Print CPU µs per span and ms per batch, with and without the per-batch export."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=5120)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    args = parser.parse_args()
    spans = build_spans(args.spans, "none")
    batches = [spans[i : i + args.batch] for i in range(0, len(spans), args.batch)]
    with OtlpReceiver() as receiver, tempfile.TemporaryDirectory() as scratch:
        for flush in (True, False):
            ledger = Path(scratch) / f"ledger-{flush}"
            elapsed, counted = _run(batches, receiver, ledger, flush=flush, protocol=args.protocol)
            again, recounted = _run(batches, receiver, ledger, flush=flush, protocol=args.protocol)
            mode = "export per batch" if flush else "periodic export"
            print(
                f"{mode:17} {args.protocol}: {elapsed / counted * 1e6:6.1f} µs/span, "
                f"{elapsed / len(batches) * 1e3:6.2f} ms/batch ({counted} calls counted); "
                f"re-export of the same spans: {again / len(spans) * 1e6:5.1f} µs/span, "
                f"{recounted} counted"
            )


if __name__ == "__main__":
    main()
