"""The baseline: the exporter a user would write in an afternoon, to compare against.

List the steps, fetch each step's trace one after the other with httpx, and make one span per
trace through the OpenTelemetry SDK's ``TracerProvider`` + ``BatchSpanProcessor`` + the stock
OTLP exporter, all with default settings, and a few attributes. Nothing is tuned: this is the
yardstick, not a straw man; its ``BatchSpanProcessor`` drops spans when its queue of 2,048 is
full, and the benchmark reports those losses.

    python -m bench.baseline --letta-url http://127.0.0.1:8283 \\
        --otlp-endpoint http://127.0.0.1:4317 --protocol grpc
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


def _exporter(protocol: str, endpoint: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def _nanos(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letta-url", required=True)
    parser.add_argument("--otlp-endpoint", required=True)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)

    provider = TracerProvider(resource=Resource.create({"service.name": "letta-baseline"}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(args.protocol, args.otlp_endpoint)))
    tracer = provider.get_tracer("letta-baseline")
    started = time.monotonic()
    count = 0
    with httpx.Client(base_url=args.letta_url, timeout=30) as client:
        after = None
        while args.limit is None or count < args.limit:
            params: dict[str, str | int] = {"order": "asc", "limit": 50}
            if after:
                params["after"] = after
            steps = client.get("/v1/steps/", params=params).raise_for_status().json()
            if not steps:
                break
            for step in steps:
                if args.limit is not None and count >= args.limit:
                    break
                response = client.get(f"/v1/steps/{step['id']}/trace").raise_for_status()
                trace = response.json()
                if trace is None:
                    continue
                end = _nanos(trace["created_at"])
                start = end - int((trace.get("latency_ms") or 0) * 1_000_000)
                model = trace["request_json"].get("model", "")
                usage = (trace.get("response_json") or {}).get("usage") or {}
                span = tracer.start_span(
                    f"chat {model}",
                    start_time=start,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": model,
                        "gen_ai.usage.input_tokens": int(
                            usage.get("prompt_tokens") or usage.get("input_tokens") or 0
                        ),
                        "gen_ai.usage.output_tokens": int(
                            usage.get("completion_tokens") or usage.get("output_tokens") or 0
                        ),
                        "letta.step.id": step["id"],
                        "letta.run.id": trace.get("run_id") or "",
                    },
                )
                span.end(end_time=end)
                count += 1
            after = steps[-1]["id"]
    provider.shutdown()
    print(json.dumps({"exported": count, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
