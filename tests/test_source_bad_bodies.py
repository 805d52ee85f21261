"""Trace bodies Letta (or a proxy in front of it) can send that are not plain JSON, over sockets.

A compressed answer is decoded; a truncated, non-UTF-8 or too deeply nested trace is that one
step's bad record (``RecordInvalidError`` naming the step), never an error about the server,
and the traces around it still come through.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from exporter import wiring
from exporter.convert import build_resource, convert_trace
from exporter.errors import RecordInvalidError, SourceHTTPError
from exporter.models import ProviderTrace
from exporter.settings import Settings
from exporter.source import StepFilter
from exporter.source._http import decode_body
from exporter.source._transport import BodyTooLargeError
from testkit import DEEP_LEVELS, BrokenTrace, FakeLetta, LettaStore, OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent


def _settings(url: str) -> Settings:
    return Settings(
        letta_base_url=url,
        max_retries=1,
        retry_backoff_initial_seconds=0.01,
        retry_backoff_max_seconds=0.02,
    )


@pytest.fixture(scope="module")
def store() -> LettaStore:
    store = LettaStore()
    store.generate(5)
    return store


@pytest.fixture
async def gzipping(store: LettaStore) -> AsyncIterator[FakeLetta]:
    with FakeLetta(store, flavour="cloud", gzip=True, early_hints=True) as letta:
        yield letta


async def test_gzipped_traces_are_decoded_on_the_fast_path(
    gzipping: FakeLetta, store: LettaStore
) -> None:
    async with wiring.letta_client(_settings(gzipping.url)) as letta:
        assert letta._requester._raw is not None  # the raw GET path is the one under test
        for step_id in store.step_ids():
            trace = await letta.get_trace(step_id)
            assert trace is not None
            assert trace.step_id == step_id
            step = await letta.get_step(step_id)
            assert step.id == step_id
    requests = gzipping.requests_to(r"/trace$")
    assert requests
    assert all(r.headers["accept-encoding"] == "gzip, deflate" for r in requests)


async def test_gzipped_answers_through_httpx_too(gzipping: FakeLetta, store: LettaStore) -> None:
    # Requests with parameters go through httpx.AsyncClient (which decodes by itself).
    async with wiring.letta_client(_settings(gzipping.url)) as letta:
        ids = [s.step.id async for s in letta.discover(StepFilter())]
    assert ids == store.step_ids()


@pytest.mark.parametrize("kind", ["truncated", "invalid_utf8", "deep"])
async def test_a_broken_trace_is_that_steps_record_error(
    store: LettaStore, kind: BrokenTrace
) -> None:
    bad = store.step_ids()[2]
    with FakeLetta(store, flavour="cloud", gzip=True) as letta:
        letta.corrupt_trace(bad, kind)
        async with wiring.letta_client(_settings(letta.url)) as client:
            got: dict[str, str] = {}
            errors: list[RecordInvalidError] = []
            for step_id in store.step_ids():
                try:
                    trace = await client.get_trace(step_id)
                except RecordInvalidError as exc:
                    errors.append(exc)
                    got[step_id] = str(exc)
                else:
                    assert trace is not None
                    got[step_id] = "ok"
        # One request for the bad one: the same bytes would come again, so no retry.
        assert len(letta.requests_to(rf"/{bad}/trace$")) == 1
    assert [v for k, v in got.items() if k != bad] == ["ok"] * 4
    assert [e.step_id for e in errors] == [bad]
    assert f"step {bad}" in got[bad]
    expected = {
        "truncated": "not valid JSON",
        "invalid_utf8": "not valid JSON",
        "deep": "nested too deeply",
    }[kind]
    assert expected in got[bad]


async def test_a_corrupt_gzip_body_is_that_steps_record_error(store: LettaStore) -> None:
    step_id = store.step_ids()[0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = gzip.compress(b'{"request_json": {}, "response_json": {}}')[:-6]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with wiring.letta_client(_settings(f"http://127.0.0.1:{port}")) as client:
            with pytest.raises(RecordInvalidError) as raised:
                await client.get_trace(step_id)
    finally:
        server.close()
    assert raised.value.step_id == step_id
    assert "gzip" in str(raised.value)


def test_decode_body_codings_and_limit() -> None:
    text = b'{"a": 1}' * 100
    assert decode_body(gzip.compress(text), b"gzip", limit=10_000) == text
    assert decode_body(zlib.compress(text), b"deflate", limit=10_000) == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw.compress(text) + raw.flush(), b"deflate", limit=10_000) == text
    assert decode_body(text, b"identity", limit=10_000) == text
    with pytest.raises(BodyTooLargeError):  # a small body that inflates past the cap
        decode_body(gzip.compress(b"0" * 100_000), b"gzip", limit=50_000)
    with pytest.raises(httpx.DecodingError):
        decode_body(text, b"br", limit=10_000)
    with pytest.raises(httpx.DecodingError):
        decode_body(b"not gzip", b"gzip", limit=10_000)


def test_convert_is_bounded_on_a_deep_body_that_got_past_parsing() -> None:
    # A trace built without validation (another source, a future parser): conversion must not
    # recurse once per level of the body.
    nested: object = {"type": "text", "text": "x"}
    for _ in range(5 * DEEP_LEVELS):
        nested = [nested]
    trace = ProviderTrace.model_construct(
        id="provider_trace-00000000",
        step_id="step-1",
        request_json={
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": nested}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": nested}}],
            "extra": nested,
        },
        response_json={"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
    )
    span = convert_trace(trace, resource=build_resource())
    warnings = span.attributes.get("letta.convert.warnings") or ()
    assert not [w for w in warnings if "internal error" in w]


# ------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["truncated", "invalid_utf8", "deep"])
def test_export_dead_letters_the_broken_trace_and_delivers_the_rest(
    tmp_path: Path, kind: BrokenTrace
) -> None:
    store = LettaStore()
    store.generate(30)
    bad = store.step_ids()[5]
    with (
        FakeLetta(store, flavour="cloud", gzip=True, early_hints=True) as letta,
        OtlpReceiver() as receiver,
    ):
        letta.corrupt_trace(bad, kind)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
        env.update(
            LETTA_EXPORTER_STATE_PATH=str(tmp_path / "state.json"),
            LETTA_EXPORTER_DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"),
            LETTA_EXPORTER_RETRY_BACKOFF_INITIAL_SECONDS="0.01",
            LETTA_EXPORTER_RETRY_BACKOFF_MAX_SECONDS="0.05",
        )
        result = subprocess.run(
            [
                *(sys.executable, "-m", "exporter.cli", "export", "--json"),
                *("--letta-url", letta.url, "--otlp-endpoint", receiver.http_base_endpoint),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        received = receiver.spans()
    assert "Traceback" not in result.stderr
    assert result.returncode == 1  # a record was not delivered
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert (summary["exported"], summary["invalid"]) == (29, 1)
    assert len([s for s in received if not s.name.startswith("invoke_agent")]) == 29
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (dead["reason"], dead["step_id"]) == ("invalid", bad)


async def test_a_deep_error_body_is_an_http_error_not_a_crash(store: LettaStore) -> None:
    nested = b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS
    with FakeLetta(store, flavour="cloud") as letta:
        letta.fail(500, times=None, path=r"/trace$", body=b'{"detail": ' + nested + b"}")
        letta.fail(404, times=None, path=r"^/v1/steps/[^/]+$", body=nested)
        async with wiring.letta_client(_settings(letta.url)) as client:
            with pytest.raises(SourceHTTPError) as raised:
                await client.get_trace(store.step_ids()[0])
            assert raised.value.status_code == 500
            with pytest.raises(SourceHTTPError) as missing:
                await client.get_step(store.step_ids()[0])
            assert missing.value.status_code == 404
