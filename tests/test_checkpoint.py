"""The state file: survives restarts, is written atomically, and refuses garbage clearly."""

from __future__ import annotations

import json
import os

import pytest

from exporter.batch import Batch, Entry, Kind, apply_delivered
from exporter.checkpoint import Checkpoint, OpenRun, PendingStep, StreamState, stream_key
from exporter.convert import RunSummary
from exporter.errors import CheckpointError
from tests._sink_spans import make_batch


def test_round_trip_keeps_cursor_pending_and_open_runs(tmp_path):
    path = tmp_path / "state" / "state.json"
    cp = Checkpoint(path)
    stream = cp.stream("k1")
    stream.cursor = "step-2"
    stream.mode = "steps"
    stream.pending["step-3"] = PendingStep("step-3", "run-1", first_seen=100.5, attempts=2)
    run = OpenRun("run-1", agent_id="agent-1")
    run.add("step-1", 10, 20)
    run.add("step-2", 5, 40)
    stream.open_runs["run-1"] = run
    cp.save()

    again = Checkpoint(path).stream("k1")
    assert again.cursor == "step-2"
    assert again.mode == "steps"
    assert again.pending["step-3"].first_seen == 100.5
    assert again.pending["step-3"].attempts == 2
    restored = again.open_runs["run-1"]
    assert restored.step_ids == ["step-1", "step-2"]
    assert (restored.first_start_ns, restored.last_end_ns) == (5, 40)
    assert restored.last_step_id == "step-2"
    # Another filter set does not see this one's cursor.
    assert Checkpoint(path).stream("k2").cursor is None


def test_save_replaces_the_file_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "state.json"
    cp = Checkpoint(path)
    for i in range(5):
        cp.stream("k").cursor = f"step-{i}"
        cp.save()
    assert json.loads(path.read_text())["streams"]["k"]["cursor"] == "step-4"
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.lock"]


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid state file"):
        Checkpoint(path)
    path.write_text('{"version": 99, "streams": {}}')
    with pytest.raises(CheckpointError, match="unsupported format"):
        Checkpoint(path)


def test_unreadable_or_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot read"):
        Checkpoint(blocker / "state.json")  # its directory is a file
    cp = Checkpoint(tmp_path / "later" / "state.json")
    (tmp_path / "later").write_text("now a file")  # the directory cannot be created any more
    with pytest.raises(CheckpointError, match="cannot write"):
        cp.save()


def test_stream_key_is_stable_and_order_independent():
    a = stream_key(letta="http://x", agents=["a", "b"], model=None)
    b = stream_key(model=None, agents=["a", "b"], letta="http://x")
    assert a == b
    assert a != stream_key(letta="http://x", agents=["a"], model=None)


def test_processes_sharing_the_file_keep_each_others_streams(tmp_path):
    path = tmp_path / "state.json"
    a, b = Checkpoint(path), Checkpoint(path)  # e.g. two shards of `export --workers 2`
    a.stream("shard-0").cursor = "step-a1"
    b.stream("shard-1").cursor = "step-b1"
    a.save()
    b.save()  # b read the file when it started, before a wrote: a's stream must survive
    a.stream("shard-0").cursor = "step-a2"
    a.save()
    on_disk = Checkpoint(path)
    assert on_disk.stream("shard-0").cursor == "step-a2"
    assert on_disk.stream("shard-1").cursor == "step-b1"


def test_concurrent_saves_from_threads_lose_no_stream(tmp_path):
    import threading

    path = tmp_path / "state.json"
    checkpoints = [Checkpoint(path) for _ in range(4)]

    def work(index: int) -> None:
        for n in range(20):
            checkpoints[index].stream(f"s{index}").cursor = f"step-{n}"
            checkpoints[index].save()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = Checkpoint(path)
    assert [on_disk.stream(f"s{i}").cursor for i in range(4)] == ["step-19"] * 4


def test_open_runs_keep_their_summary_and_old_files_load_without_one(tmp_path):
    path = tmp_path / "state.json"
    first = RunSummary(input_text="hi", input_at_ns=10, calls=1, last_at_ns=20, model="m")
    failed = RunSummary(
        calls=1, failed_calls=1, last_at_ns=50, last_failed=True, last_error_message="boom"
    )
    cp = Checkpoint(path)
    state = cp.stream("k")
    batch = Batch()
    for step_id, summary in (("s1", first), ("s2", failed), ("s1", first)):  # s1 asked again
        batch.entries.append(Entry(step_id, Kind.SPAN, "run-1", summary=summary, span_index=0))
    batch.spans.extend(make_batch(1))
    apply_delivered(batch, state, owns_run=lambda _run: True, on_missing=lambda _e: None)
    cp.save()

    kept = Checkpoint(path).stream("k").open_runs["run-1"].summary
    assert kept == first.merge(failed)
    assert kept is not None
    assert kept.calls == 2  # the step asked again is not counted twice
    assert (kept.input_text, kept.last_error_message, kept.model) == ("hi", "boom", "m")

    # A state file from before summaries were kept, one with a damaged summary, one with a
    # field a newer version added.
    old = {"agent_id": "a", "first_start_ns": 1, "last_end_ns": 2, "step_ids": ["s"]}
    loaded = StreamState.from_json(
        {
            "open_runs": {
                "old": old,
                "bad": old | {"summary": {"calls": "two"}},
                "newer": old | {"summary": {"calls": 3, "what_is_this": 1}},
            }
        }
    )
    assert loaded.open_runs["old"].summary is None
    assert loaded.open_runs["old"].step_ids == ["s"]
    assert loaded.open_runs["bad"].summary is None
    assert loaded.open_runs["newer"].summary == RunSummary(calls=3)
