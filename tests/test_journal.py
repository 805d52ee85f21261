"""The journal: group commit, torn tails, segments and trimming, and kill -9 in a burst."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.journal import KIND_DAMAGED, KIND_RECORD, Journal, JournalFullError, JournalOptions
from exporter.source._socket_record import parse_socket_record

from .test_source_socket import load_records, with_id

FAST = JournalOptions(commit_delay=0.0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


async def read_all(journal: Journal, offset: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    position = journal.acked if offset is None else offset
    while entries := await journal.read(position, max_records=7):
        out += [e.payload for e in entries]
        position = entries[-1].end
    return out


async def test_a_group_commit_makes_frames_readable_only_once_fsynced(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, JournalOptions(commit_delay=0.01))
    ends = [journal.append(KIND_RECORD, f"r{n}".encode()) for n in range(100)]
    assert await journal.read(0) == []  # queued, not yet committed
    assert journal.depth_records == 100
    await journal.wait_committed(ends[-1])
    assert await read_all(journal) == [f"r{n}".encode() for n in range(100)]
    await journal.aclose()


async def test_close_commits_what_is_queued_and_reopen_reads_it(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, JournalOptions(commit_delay=1.0))
    for n in range(10):
        journal.append(KIND_RECORD, f"r{n}".encode())
    await journal.aclose()
    again = await Journal.open(tmp_path, FAST)
    assert again.journal_id == journal.journal_id
    assert await read_all(again) == [f"r{n}".encode() for n in range(10)]
    assert again.depth_records == 10
    await again.aclose()


async def test_a_torn_tail_is_cut_and_every_full_frame_read_again(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, FAST)
    for n in range(5):
        await journal.wait_committed(journal.append(KIND_RECORD, f"record {n}".encode() * 50))
    await journal.aclose()
    (segment,) = segments(tmp_path)
    whole = segment.read_bytes()
    frame = whole[-(10 + len(b"record 4") * 50) :]
    with segment.open("ab") as handle:
        handle.write(frame[:-7])  # a write cut short by a crash
    again = await Journal.open(tmp_path, FAST)
    assert segment.stat().st_size == len(whole)
    assert await read_all(again) == [f"record {n}".encode() * 50 for n in range(5)]
    await again.wait_committed(again.append(KIND_RECORD, b"after"))
    assert (await read_all(again))[-1] == b"after"
    await again.aclose()


async def test_a_flipped_byte_in_the_tail_is_cut_by_the_crc(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, FAST)
    for n in range(3):
        await journal.wait_committed(journal.append(KIND_RECORD, f"record {n}".encode()))
    await journal.aclose()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = await Journal.open(tmp_path, FAST)
    assert await read_all(again) == [b"record 0", b"record 1"]
    await again.aclose()


async def test_trim_deletes_whole_segments_and_survives_a_restart(tmp_path: Path) -> None:
    options = JournalOptions(commit_delay=0.0, segment_bytes=1000)
    journal = await Journal.open(tmp_path, options)
    ends = []
    for n in range(40):
        end = journal.append(KIND_RECORD, f"{n:03d}".encode() * 30)
        ends.append(end)
        await journal.wait_committed(end)
    assert len(segments(tmp_path)) >= 4
    before = len(segments(tmp_path))
    await journal.trim(ends[19])
    assert len(segments(tmp_path)) < before
    assert journal.depth_records == 20
    assert journal.depth_bytes == ends[-1] - ends[19]
    await journal.aclose()
    again = await Journal.open(tmp_path, options)
    assert again.acked == ends[19]
    assert await read_all(again) == [f"{n:03d}".encode() * 30 for n in range(20, 40)]
    assert again.depth_records == 20
    await again.aclose()


async def test_appends_past_max_bytes_are_refused_until_a_trim(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, JournalOptions(commit_delay=0.0, max_bytes=100))
    first = journal.append(KIND_RECORD, b"x" * 40)
    journal.append(KIND_RECORD, b"y" * 40)
    with pytest.raises(JournalFullError):
        journal.append(KIND_RECORD, b"z" * 40)
    await journal.wait_committed(journal.end)
    await journal.trim(first)
    journal.append(KIND_RECORD, b"z" * 40)
    await journal.aclose()


_CHILD = """
import asyncio, sys
from exporter.journal import JournalOptions
from exporter.source import SocketSource

async def main():
    source = SocketSource(sys.argv[1], sys.argv[2], journal=JournalOptions(commit_delay=0.005))
    await source.start()
    print("ready", flush=True)
    last = source.journal.committed
    while True:  # the journal lives on the reception thread's loop: poll its committed offset
        await asyncio.sleep(0.002)
        if source.journal.committed != last:
            last = source.journal.committed
            print("committed", last, flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
def test_kill_9_in_a_burst_loses_no_committed_record(short_dir: Path) -> None:
    sock, journal_dir = short_dir / "s.sock", short_dir / "journal"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(sock), str(journal_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    committed = [0]
    half = threading.Event()

    def watch() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            # The kill can cut the child's last line short: only whole lines count.
            parts = line.split()
            if line.endswith("\n") and len(parts) == 2 and parts[1].isdigit():
                committed[0] = max(committed[0], int(parts[1]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    base = load_records()[1]
    total, sent = 3000, [0]
    sent_lock = threading.Lock()

    def sender(start: int) -> None:
        for n in range(start, total, 8):
            record = with_id(base, n)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(sock))
                    s.sendall((json.dumps(record, default=str) + "\n").encode())
            except OSError:
                return  # the listener is gone
            with sent_lock:
                sent[0] += 1
                if sent[0] == total // 3:
                    half.set()

    senders = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for thread in senders:
        thread.start()
    assert half.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for thread in senders:
        thread.join()
    watcher.join()
    child.stdout.close()
    reported = committed[0]
    assert reported > 0

    async def reopen() -> list[tuple[int, bytes]]:
        journal = await Journal.open(journal_dir, FAST)
        out: list[tuple[int, bytes]] = []
        position = journal.acked
        while entries := await journal.read(position):
            out += [(e.end, e.payload) for e in entries]
            position = entries[-1].end
        await journal.aclose()
        return out

    entries = asyncio.run(reopen())
    ends = [end for end, _ in entries]
    assert reported in ends  # everything committed before the kill is there, to the frame
    ids = [parse_socket_record(payload)[0].id for _, payload in entries]  # none torn
    assert len(ids) == len(set(ids))
    assert set(ids) <= {with_id(base, n)["provider_trace_id"] for n in range(total)}
    # A completed sendall is not a receipt (the kernel buffers it; Letta never waits for an
    # answer): what counts is what the journal reported committed, and that is all there.
    assert sum(1 for end in ends if end <= reported) > 0


async def test_a_frame_changed_after_its_commit_reads_back_as_damaged(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, FAST)
    await journal.wait_committed(journal.append(KIND_RECORD, b"first"))
    await journal.wait_committed(journal.append(KIND_RECORD, b"second"))
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[12] ^= 0xFF  # inside the first payload
    segment.write_bytes(bytes(data))
    entries = await journal.read(0)
    assert [e.kind for e in entries] == [KIND_DAMAGED, KIND_RECORD]
    assert entries[1].payload == b"second"
    await journal.aclose()


async def test_appends_past_the_uncommitted_limit_are_refused(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, JournalOptions(commit_delay=5.0, max_pending_bytes=100))
    journal.append(KIND_RECORD, b"x" * 80)
    with pytest.raises(JournalFullError) as info:
        journal.append(KIND_RECORD, b"y" * 80)
    assert info.value.uncommitted
    assert "waiting for the disk" in str(info.value)
    await journal.aclose()
