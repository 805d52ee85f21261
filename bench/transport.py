"""CPU per trace GET of the Letta client's HTTP stack: the lean transport against httpx's own.

The exporter makes one ``GET /v1/steps/{id}/trace`` per trace, so what its HTTP stack costs per
request bounds its throughput. This measures exactly that path (``Requester.get``, the one the
exporter uses: the lean transport's raw GETs, or httpx's ``AsyncClient`` over httpcore) in this
process, against two servers in processes of their own, so their CPU is not counted:

``fast``
    ``bench.servers.LettaProcess``: the fake Letta's routes behind a small asyncio server that
    answers with pre-serialised bytes (the server of ``python -m bench.run``).
``stdlib``
    ``testkit.FakeLetta`` itself: ``http.server``'s ``ThreadingHTTPServer``, a head parsed in
    Python and a thread per connection, like many small real servers.

Bodies are fetched, not parsed (parsing is the same for every transport). Figures are µs of
this process's CPU (user + system) per request, the median of ``--repeat`` rounds, and the
wall rate. ``--exporter-path DIR`` measures another checkout's ``exporter`` package (the lean
transport of an earlier commit, say)::

    .venv/bin/python -m bench.transport --requests 4000 --concurrency 16
    git archive <commit> | tar -x -C /tmp/old
    .venv/bin/python -m bench.transport --exporter-path /tmp/old --transport lean
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["main"]


def _serve_stdlib(conn: Connection, traces: int, size: str) -> None:
    """A ``FakeLetta`` (ThreadingHTTPServer) over the bench backlog, until told to stop."""
    from bench.backlog import BacklogSpec, build_store
    from testkit import FakeLetta

    store, _ = build_store(BacklogSpec(traces=traces, size=size))
    with FakeLetta(store, flavour="cloud") as fake:
        conn.send(fake.url)
        with contextlib.suppress(EOFError):
            conn.recv()


@contextlib.contextmanager
def _server(kind: str, traces: int, size: str) -> Iterator[str]:
    if kind == "fast":
        from bench.backlog import BacklogSpec
        from bench.servers import LettaProcess

        with LettaProcess(BacklogSpec(traces=traces, size=size), flavour="cloud") as letta:
            yield letta.url
        return
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve_stdlib, args=(child, traces, size), daemon=True)
    process.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("the stdlib fake Letta did not start")
        yield parent.recv()
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


def _client(transport: str, url: str, concurrency: int) -> Any:
    import httpx

    from exporter.settings import Settings
    from exporter.source import LettaClient

    if transport == "lean":
        settings = Settings(letta_base_url=url, concurrency=concurrency, request_timeout_seconds=30)
        try:
            from exporter.wiring import letta_client
        except ImportError:  # a checkout from before the client was built in wiring
            return LettaClient.from_settings(settings)
        return letta_client(settings)
    http = httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(30),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        headers={"Accept": "application/json"},
    )
    return LettaClient(http, concurrency=concurrency)


async def _round(transport: str, url: str, args: argparse.Namespace) -> tuple[float, float]:
    async with _client(transport, url, args.concurrency) as letta:
        requester = letta._requester
        assert (requester._raw is not None) == (transport == "lean")
        page = await requester.get("/v1/steps/", {"limit": args.traces, "order": "asc"})
        paths = [f"/v1/steps/{step['id']}/trace" for step in json.loads(page)]
        queue = [paths[i % len(paths)] for i in range(args.requests)]

        async def worker(mine: list[str]) -> int:
            size = 0
            for path in mine:
                body = await requester.get(path)
                size += len(body or b"")
            return size

        async def run(items: list[str]) -> None:
            shares = [items[i :: args.concurrency] for i in range(args.concurrency)]
            sizes = await asyncio.gather(*(worker(s) for s in shares))
            assert all(sizes)

        await run(queue[: args.concurrency * 20])  # warm the pool
        cpu, wall = time.process_time(), time.perf_counter()
        await run(queue)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / args.requests * 1e6, args.requests / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU per trace GET of the Letta transports.")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--traces", type=int, default=400, help="distinct traces served")
    parser.add_argument("--size", default="20kb", choices=["2kb", "20kb", "200kb"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", choices=["fast", "stdlib", "both"], default="both")
    parser.add_argument("--transport", choices=["lean", "httpx", "both"], default="both")
    parser.add_argument("--exporter-path", help="import the exporter package from this checkout")
    args = parser.parse_args(argv)
    if args.exporter_path:
        # Only for this import: the servers' processes keep this checkout's bench and testkit
        # (submodules of the package then load from its own directory).
        sys.path.insert(0, args.exporter_path)
        import exporter.settings
        import exporter.source

        sys.path.remove(args.exporter_path)
    import exporter

    servers = ["fast", "stdlib"] if args.server == "both" else [args.server]
    transports = ["lean", "httpx"] if args.transport == "both" else [args.transport]
    print(f"exporter from {exporter.__file__}; {args.requests} GETs of {args.size} traces, ")
    print(f"{args.concurrency} in flight, median of {args.repeat} rounds")
    print(f"{'server':8} {'transport':10} {'CPU µs/GET':>11} {'GETs/s':>8}")
    for server in servers:
        with _server(server, args.traces, args.size) as url:
            for transport in transports:
                rounds = [asyncio.run(_round(transport, url, args)) for _ in range(args.repeat)]
                cpu = statistics.median(r[0] for r in rounds)
                rate = statistics.median(r[1] for r in rounds)
                print(f"{server:8} {transport:10} {cpu:11.0f} {rate:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
