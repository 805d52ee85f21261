"""The socket source over real Unix sockets: Letta's way of sending, bad input, the path rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.errors import ConfigError, SocketInUseError, SocketPathError
from exporter.journal import JournalOptions
from exporter.source import ListenerOptions, SocketSource
from exporter.source._contract import CaughtUp, Event, Found, Unreadable

from .conftest import LETTA

RECORDS = LETTA / "socket" / "records.ndjson"


def load_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]


def letta_send(path: str, record: dict[str, Any]) -> None:
    """What Letta's socket backend does for one record: connect, one line, close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60.0)
        sock.connect(path)
        payload = json.dumps(record, default=str) + "\n"
        sock.sendall(payload.encode())


def raw_send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket address holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(
    short_dir: Path,
    *,
    listener: ListenerOptions | None = None,
    journal: JournalOptions | None = None,
    sock: str = "run/letta.sock",
    reception_thread: bool = True,
) -> AsyncIterator[SocketSource]:
    source = SocketSource(
        short_dir / sock,
        short_dir / "journal",
        listener=listener,
        journal=journal or JournalOptions(commit_delay=0.002),
        reception_thread=reception_thread,
    )
    await source.start()
    try:
        yield source
    finally:
        await source.aclose()


async def collect(
    source: SocketSource, count: int, *, resume: str | None = None, limit: float = 20.0
) -> list[Event]:
    """Events (CaughtUp left out) until ``count`` arrived: a bounded wait on the stream."""
    out: list[Event] = []

    async def take() -> None:
        async for event in source.read(resume=resume, follow=True):
            if isinstance(event, CaughtUp):
                continue
            out.append(event)
            if len(out) >= count:
                return

    await asyncio.wait_for(take(), limit)
    return out


def with_id(record: dict[str, Any], n: int) -> dict[str, Any]:
    copy = dict(record)
    copy["provider_trace_id"] = f"provider_trace-{n:08x}-0000-4000-8000-000000000000"
    return copy


@pytest.mark.parametrize("reception_thread", [True, False], ids=["own-thread", "caller-loop"])
async def test_replay_the_recording_like_letta_from_concurrent_threads(
    short_dir: Path, reception_thread: bool
) -> None:
    records = load_records()
    many = [with_id(records[i % len(records)], i) for i in range(200)]
    async with running(short_dir, reception_thread=reception_thread) as source:
        path = str(source.path)
        await asyncio.gather(*(asyncio.to_thread(letta_send, path, r) for r in records + many))
        events = await collect(source, len(records) + len(many))
        assert all(isinstance(e, Found) for e in events)
        ids = [e.trace.id for e in events if isinstance(e, Found)]
        expected = [r["provider_trace_id"] for r in records + many]
        assert sorted(ids) == sorted(expected)  # every record once
        assert source.journal.depth_records == len(expected)
        assert source.stats.received == len(expected)
        found = {e.trace.id: e for e in events if isinstance(e, Found)}
        summary = found["provider_trace-a59bd473-fdc8-410b-83a4-98acfe96f1db"]
        assert summary.trace.call_type == "summarization"
        assert summary.trace.step_id is None
        assert summary.trace.run_id is None
        assert summary.origin == "socket"


async def test_several_lines_per_connection_and_a_line_in_pieces(short_dir: Path) -> None:
    records = load_records()
    async with running(short_dir) as source:
        path = str(source.path)
        two = b"".join(json.dumps(r).encode() + b"\n" for r in records[:2])

        def pieces() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
                line = json.dumps(records[2]).encode() + b"\n"
                for i in range(0, len(line), 1000):
                    sock.sendall(line[i : i + 1000])

        await asyncio.to_thread(raw_send, path, two)
        await asyncio.to_thread(pieces)
        events = await collect(source, 3)
        assert [e.trace.id for e in events if isinstance(e, Found)] == [
            r["provider_trace_id"] for r in records[:3]
        ]


async def test_a_large_record_passes_the_default_line_limits(short_dir: Path) -> None:
    record = with_id(load_records()[0], 1)
    record["request"] = {**record["request"], "padding": "x" * (6 << 20)}
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(source.path), record)
        (event,) = await collect(source, 1)
        assert isinstance(event, Found)
        assert len(event.trace.request_json["padding"]) == 6 << 20


async def test_bad_input_is_rejected_with_a_reason_and_the_listener_keeps_serving(
    short_dir: Path,
) -> None:
    good = load_records()[0]
    options = ListenerOptions(max_record_bytes=200_000, idle_timeout=1.0)
    async with running(short_dir, listener=options) as source:
        path = str(source.path)
        await asyncio.to_thread(raw_send, path, b'{"provider_trace_id": "provider_trace-\n')
        wrong = {**good, "tags": "not-a-list"}
        await asyncio.to_thread(letta_send, path, wrong)
        await asyncio.to_thread(raw_send, path, b"\x00\xff\xfe garbage \x01\n")
        await asyncio.to_thread(raw_send, path, b"[1, 2, 3]\n")
        await asyncio.to_thread(raw_send, path, b"y" * 300_000 + b"\n")
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(path)
        slow.sendall(b'{"provider_trace_id": "provider_trace-0')  # and never the rest
        try:
            events = await collect(source, 6)
        finally:
            slow.close()
        await asyncio.to_thread(letta_send, path, good)
        events += await collect(source, 1, resume=events[-1].position)
    by_reason = [(e.reason, e.record_id) for e in events if isinstance(e, Unreadable)]
    assert sorted(r for r, _ in by_reason) == sorted(
        ["invalid", "invalid", "invalid", "invalid", "too_large", "timeout"]
    )
    assert (
        "invalid",
        good["provider_trace_id"],
    ) in by_reason  # the wrong type names the record
    unreadable = [e for e in events if isinstance(e, Unreadable)]
    wrong_type = next(e for e in unreadable if e.record_id == good["provider_trace_id"])
    assert "tags" in wrong_type.detail
    too_large = next(e for e in unreadable if e.reason == "too_large")
    assert "300000 bytes" in too_large.detail
    assert too_large.raw is not None
    assert 0 < len(too_large.raw) <= 64 * 1024
    timeout = next(e for e in unreadable if e.reason == "timeout")
    assert timeout.raw == b'{"provider_trace_id": "provider_trace-0'
    garbage = next(e for e in unreadable if e.raw and e.raw.startswith(b"\x00"))
    assert garbage.reason == "invalid"
    assert isinstance(events[-1], Found)
    assert events[-1].trace.id == good["provider_trace_id"]
    assert source.stats.invalid == {"invalid": 4, "too_large": 1, "timeout": 1}


async def test_a_failed_call_gets_the_error_shape_the_api_stores(short_dir: Path) -> None:
    failed = next(r for r in load_records() if r["response"] is None)
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(source.path), failed)
        (event,) = await collect(source, 1)
    api = json.loads((LETTA / "socket" / "api_view.json").read_text())[failed["step_id"]]
    assert isinstance(event, Found)
    assert event.trace.response_json == api["trace"]["response_json"]


async def test_a_newer_protocol_version_is_read_with_one_warning(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [{**with_id(load_records()[0], n), "protocol_version": 4, "new": 1} for n in (1, 2)]
    async with running(short_dir) as source:
        for record in records:
            await asyncio.to_thread(letta_send, str(source.path), record)
        with caplog.at_level(logging.WARNING):
            events = await collect(source, 2)
    assert all(isinstance(e, Found) for e in events)
    assert caplog.text.count("protocol version 4") == 1


async def test_the_path_is_created_with_mode_0660(short_dir: Path) -> None:
    async with running(short_dir, sock="a/b/letta.sock") as source:
        info = os.stat(source.path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert source.listening
    assert not source.path.exists()  # removed on close


async def test_the_mode_is_configurable(short_dir: Path) -> None:
    async with running(short_dir, listener=ListenerOptions(mode=0o600)) as source:
        assert stat.S_IMODE(os.stat(source.path).st_mode) == 0o600


async def test_a_stale_socket_is_replaced(short_dir: Path) -> None:
    path = short_dir / "run" / "letta.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, no one listens: what a crash leaves
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(path), load_records()[0])
        (event,) = await collect(source, 1)
        assert isinstance(event, Found)


async def test_a_live_listener_is_refused_and_keeps_its_socket(short_dir: Path) -> None:
    async with running(short_dir) as first:
        second = SocketSource(first.path, short_dir / "journal2")
        with pytest.raises(SocketInUseError) as info:
            await second.start()
        assert isinstance(info.value, ConfigError)
        assert str(first.path) in str(info.value)
        await asyncio.to_thread(letta_send, str(first.path), load_records()[0])
        assert len(await collect(first, 1)) == 1


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_a_regular_file_or_directory_is_refused(short_dir: Path, kind: str) -> None:
    path = short_dir / "letta.sock"
    if kind == "file":
        path.write_text("keep me")
    else:
        path.mkdir()
    source = SocketSource(path, short_dir / "journal")
    with pytest.raises(SocketPathError, match="refusing to replace it"):
        await source.start()
    assert path.exists()
    if kind == "file":
        assert path.read_text() == "keep me"


async def test_a_path_too_long_for_a_socket_is_refused(short_dir: Path) -> None:
    source = SocketSource(short_dir / ("x" * 120), short_dir / "journal")
    with pytest.raises(SocketPathError, match="longer than"):
        await source.start()


async def test_check_reports_the_listener_and_the_latest_record(short_dir: Path) -> None:
    async with running(short_dir) as source:
        before = await source.check()
        assert before.listening
        assert before.connectable
        assert before.last_received is None
        assert "no record yet" in before.describe()
        await asyncio.to_thread(letta_send, str(source.path), load_records()[0])
        await collect(source, 1)
        after = await source.check()
        assert after.last_received is not None
        assert after.received == 1
        assert "latest record at" in after.describe()
    gone = await source.check()
    assert not gone.listening
    assert not gone.connectable


async def test_a_full_journal_refuses_with_a_count_and_a_log_line(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [with_id(load_records()[1], n) for n in range(6)]
    size = len(json.dumps(records[0])) + 100
    journal = JournalOptions(max_bytes=size * 3, commit_delay=0.0)
    async with running(short_dir, journal=journal) as source:
        with caplog.at_level(logging.ERROR):
            for record in records:
                await asyncio.to_thread(letta_send, str(source.path), record)
            await _until(lambda: source.stats.received + source.stats.refused == 6)
        assert source.stats.received == 3
        assert source.stats.refused == 3
        assert "journal full" in caplog.text
        assert "refused 1 records" in caplog.text
        events = await collect(source, 3)
        # Delivered and acknowledged: room again, reception goes on.
        assert events[-1].position is not None
        await source.acknowledge(events[-1].position)
        assert source.journal.depth_records == 0
        await asyncio.to_thread(letta_send, str(source.path), with_id(records[0], 99))
        (more,) = await collect(source, 1, resume=events[-1].position)
        assert isinstance(more, Found)
        assert source.stats.received == 4


async def test_restart_reads_what_was_not_acknowledged_with_the_same_ids(short_dir: Path) -> None:
    records = load_records()
    async with running(short_dir) as source:
        for record in records:
            await asyncio.to_thread(letta_send, str(source.path), record)
        events = await collect(source, len(records))
        fourth = events[3].position
        assert fourth is not None
        await source.acknowledge(fourth)
    async with running(short_dir) as again:
        replayed = await collect(again, len(records) - 4)
        assert [e.trace.id for e in replayed if isinstance(e, Found)] == [
            r["provider_trace_id"] for r in records[4:]
        ]
        # A position saved by the checkpoint resumes right after it.
        later = await collect(again, len(records) - 6, resume=events[5].position)
        assert [e.trace.id for e in later if isinstance(e, Found)] == [
            r["provider_trace_id"] for r in records[6:]
        ]


async def test_a_position_of_another_journal_reads_from_the_start(short_dir: Path) -> None:
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(source.path), load_records()[0])
        events = await collect(source, 1, resume="0123456789abcdef:999999")
        assert len(events) == 1


async def _until(condition: Any, limit: float = 30.0) -> None:
    """A bounded poll of a counter the listener updates (no event to wait on)."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_the_size_cap_takes_a_line_of_exactly_its_size(short_dir: Path) -> None:
    record = with_id(load_records()[0], 7)
    line = json.dumps(record).encode()
    cap = ListenerOptions(max_record_bytes=len(line), idle_timeout=5.0)
    async with running(short_dir, listener=cap) as source:
        path = str(source.path)
        await asyncio.to_thread(raw_send, path, line + b"\n")
        await asyncio.to_thread(raw_send, path, line[:-1] + b" }\n")  # one byte over
        events = await collect(source, 2)
    assert isinstance(events[0], Found)
    assert isinstance(events[1], Unreadable)
    assert events[1].reason == "too_large"
    assert f"a line of {len(line) + 1} bytes" in events[1].detail


async def test_a_sender_that_closes_without_a_newline_still_delivers_its_record(
    short_dir: Path,
) -> None:
    record = with_id(load_records()[0], 8)
    async with running(short_dir) as source:
        await asyncio.to_thread(raw_send, str(source.path), json.dumps(record).encode())
        await asyncio.to_thread(raw_send, str(source.path), b'{"provider_trace_id": "provid')
        events = await collect(source, 2)
    found = [e for e in events if isinstance(e, Found)]
    unreadable = [e for e in events if isinstance(e, Unreadable)]
    assert [e.trace.id for e in found] == [record["provider_trace_id"]]
    assert [e.reason for e in unreadable] == ["invalid"]


async def test_a_position_inside_a_frame_reads_from_the_start(short_dir: Path) -> None:
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(source.path), load_records()[0])
        (first,) = await collect(source, 1)
        assert first.position is not None
        ident, _, end = first.position.rpartition(":")
        events = await collect(source, 1, resume=f"{ident}:{int(end) - 5}")
        assert isinstance(events[0], Found)
        assert isinstance(first, Found)
        assert events[0].trace.id == first.trace.id


async def test_check_from_another_process_reads_the_journal_for_the_latest_record(
    short_dir: Path,
) -> None:
    async with running(short_dir) as source:
        await asyncio.to_thread(letta_send, str(source.path), load_records()[0])
        await collect(source, 1)
        outsider = SocketSource(source.path, short_dir / "journal")  # never started
        seen = await outsider.check()
        assert seen.connectable
        assert not seen.listening
        assert seen.last_received is not None


async def test_protocol_versions_1_and_2_are_read(short_dir: Path) -> None:
    base = load_records()[0]
    v1 = {
        k: v
        for k, v in with_id(base, 1).items()
        if k not in ("user_id", "compaction_settings", "llm_config")
    }
    v1["protocol_version"] = 1
    v2 = {**with_id(base, 2), "protocol_version": 2}
    async with running(short_dir) as source:
        for record in (v1, v2):
            await asyncio.to_thread(letta_send, str(source.path), record)
        events = await collect(source, 2)
    traces = {e.trace.id: e.trace for e in events if isinstance(e, Found)}
    assert set(traces) == {v1["provider_trace_id"], v2["provider_trace_id"]}
    assert traces[v1["provider_trace_id"]].user_id is None
    assert traces[v1["provider_trace_id"]].llm_config is None
    assert traces[v2["provider_trace_id"]].llm_config == base["llm_config"]
