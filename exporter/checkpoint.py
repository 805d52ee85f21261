"""The durable cursor: where delivery stopped, per filter set, in one JSON state file.

Delivery is at-least-once. The worker saves the checkpoint only after the collector accepted a
batch, so after a crash (even ``kill -9``) the next start resumes at the last delivered step and
re-sends at most what was in flight; re-sent spans carry the same ids, so backends deduplicate.

The file is written atomically: a temporary file in the same directory, ``fsync``, ``rename``,
then ``fsync`` of the directory. A reader sees either the old or the new state, never half.

Several processes may share the file (the shards of ``export --workers``, or two jobs with
different filters): each save takes an exclusive lock on ``<file>.lock``, reads the file again
and replaces only the streams this process uses, so nobody's cursor is overwritten.

One file holds several *streams*, one per filter set (Letta URL, agents, model, project, shard,
and for one-shot exports the time window), so different jobs can share a state file without
resuming each other's cursors. A stream holds:

* ``cursor``: the discovery position (see ``exporter.source``) of the last step handled;
* ``pending``: steps whose trace was ``null`` when asked (Letta writes traces asynchronously),
  asked again on later passes until they settle;
* ``open_runs``: runs with delivered steps whose ``invoke_agent`` parent span is not emitted yet,
  with the time range of their spans and the ids of the steps delivered (so a run that is still
  going neither loses nor re-exports steps), and what their delivered calls said (a
  :class:`~exporter.convert.RunSummary`: the run's input and answer, failed calls), so a run span
  shipped after a restart says the same as one shipped without it. A state file written before
  summaries were kept loads with none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

try:
    import fcntl
except ImportError:  # not on Windows: one process per state file there
    fcntl = None  # type: ignore[assignment]

from .convert import RunSummary
from .errors import CheckpointError

__all__ = ["Checkpoint", "OpenRun", "PendingStep", "StreamState", "stream_key"]

_VERSION: Final = 1


@dataclass(slots=True)
class PendingStep:
    """A step whose trace was not written yet when it was first asked for."""

    step_id: str
    run_id: str | None
    first_seen: float  # Unix seconds
    attempts: int = 1


@dataclass(slots=True)
class OpenRun:
    """A run with exported steps and no parent span yet."""

    run_id: str
    agent_id: str | None = None
    first_start_ns: int | None = None
    last_end_ns: int | None = None
    step_ids: list[str] = field(default_factory=list)
    last_step_id: str | None = None
    summary: RunSummary | None = None

    def add(self, step_id: str, start_ns: int | None, end_ns: int | None) -> None:
        """Record a delivered step of this run and widen the run's time range."""
        if step_id not in self.step_ids:
            self.step_ids.append(step_id)
        self.last_step_id = step_id
        if start_ns is not None:
            self.first_start_ns = (
                start_ns if self.first_start_ns is None else min(self.first_start_ns, start_ns)
            )
        if end_ns is not None:
            self.last_end_ns = end_ns if self.last_end_ns is None else max(self.last_end_ns, end_ns)

    def summarize(self, call: RunSummary) -> None:
        """Fold one delivered call's summary into the run's."""
        self.summary = call if self.summary is None else self.summary.merge(call)


@dataclass(slots=True)
class StreamState:
    """The state of one filter set."""

    cursor: str | None = None
    mode: str | None = None
    pending: dict[str, PendingStep] = field(default_factory=dict)
    open_runs: dict[str, OpenRun] = field(default_factory=dict)
    delivered: int = 0
    description: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "mode": self.mode,
            "delivered": self.delivered,
            "description": self.description,
            "pending": {
                k: {"run_id": v.run_id, "first_seen": v.first_seen, "attempts": v.attempts}
                for k, v in self.pending.items()
            },
            "open_runs": {
                k: {
                    "agent_id": v.agent_id,
                    "first_start_ns": v.first_start_ns,
                    "last_end_ns": v.last_end_ns,
                    "step_ids": v.step_ids,
                    "last_step_id": v.last_step_id,
                    "summary": None if v.summary is None else _summary_to_json(v.summary),
                }
                for k, v in self.open_runs.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamState:
        return cls(
            cursor=data.get("cursor"),
            mode=data.get("mode"),
            delivered=int(data.get("delivered", 0)),
            description=dict(data.get("description") or {}),
            pending={
                k: PendingStep(
                    step_id=k,
                    run_id=v.get("run_id"),
                    first_seen=float(v["first_seen"]),
                    attempts=int(v.get("attempts", 1)),
                )
                for k, v in (data.get("pending") or {}).items()
            },
            open_runs={
                k: OpenRun(
                    run_id=k,
                    agent_id=v.get("agent_id"),
                    first_start_ns=v.get("first_start_ns"),
                    last_end_ns=v.get("last_end_ns"),
                    step_ids=list(v.get("step_ids") or []),
                    last_step_id=v.get("last_step_id"),
                    summary=_summary_from_json(v.get("summary")),
                )
                for k, v in (data.get("open_runs") or {}).items()
            },
        )


_JSON_TYPES: Final[dict[str, type]] = {"str": str, "int": int, "bool": bool}
#: Each summary field's JSON type and whether it may be null (from its annotation).
_SUMMARY_FIELDS: Final = {
    f.name: (_JSON_TYPES[str(f.type).split(" | ")[0]], "None" in str(f.type))
    for f in fields(RunSummary)
}


def _summary_to_json(summary: RunSummary) -> dict[str, Any]:
    """The summary's fields as a JSON object (``dataclasses.asdict`` deep-copies each value,
    a cost the state file paid for every open run at every save)."""
    return {name: getattr(summary, name) for name in _SUMMARY_FIELDS}


def _summary_from_json(data: Any) -> RunSummary | None:
    """A stored run summary; None when there is none (an older state file) or it is unreadable.

    A summary only enriches the run span (its input, answer and error), so one that cannot be
    read is dropped rather than making the whole state file unreadable. Fields a newer version
    wrote are ignored.
    """
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for name, (kind, nullable) in _SUMMARY_FIELDS.items():
        if name not in data:
            continue
        value = data[name]
        if value is None and nullable:
            values[name] = None
        elif type(value) is kind:  # bool is not an int here, nor an int a bool
            values[name] = value
        else:
            return None
    return RunSummary(**values)


def stream_key(**parts: Any) -> str:
    """A short stable key for a filter set (order of ``parts`` does not matter)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoint:
    """The state file. Load once, mutate a stream's state, ``save()`` after each delivery.

    Args:
        path: the state file; its directory is created if missing.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._streams: dict[str, StreamState] = {}
        self._mine: set[str] = set()
        self._streams = {k: StreamState.from_json(v) for k, v in self._read().items()}

    def _read(self, *, check: bool = True) -> dict[str, Any]:
        """The streams on disk, as JSON (empty when there is no file yet).

        ``check`` reads each stream as a model too (at start); a save only passes the other
        processes' streams through, as they are.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CheckpointError(str(self.path), f"cannot read: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _VERSION:
                raise ValueError(f"unsupported format (version {data.get('version')!r})")
            streams = data["streams"]
            if check:
                for value in streams.values():
                    StreamState.from_json(value)  # every stream must be readable
            return dict(streams)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                str(self.path),
                f"not a valid state file ({exc}); move it away to start from scratch",
            ) from exc

    def stream(self, key: str) -> StreamState:
        """The state of one filter set (created empty the first time); this process owns it."""
        self._mine.add(key)
        return self._streams.setdefault(key, StreamState())

    def save(self) -> None:
        """Write this process's streams atomically (temp file, fsync, rename, fsync the directory),
        keeping the other streams as they are on disk.

        Raises:
            CheckpointError: the file cannot be written (disk full, permissions).
        """
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(str(self.path), f"cannot write: {exc.strerror or exc}") from exc
        with self._locked():
            streams = self._read(check=False)
            streams.update({k: self._streams[k].to_json() for k in self._mine})
            self._write(
                json.dumps({"version": _VERSION, "streams": streams}, separators=(",", ":"))
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(str(self.path), f"cannot lock: {exc.strerror or exc}") from exc
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, text: str) -> None:
        payload = text.encode()
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(directory)
        except OSError as exc:
            raise CheckpointError(str(self.path), f"cannot write: {exc.strerror or exc}") from exc


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
