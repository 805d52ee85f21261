"""A fake Letta server on a real socket, for tests and benchmarks.

It answers the read routes the exporter uses the way a real server does (see
``tests/fixtures/letta-0.16.8`` and the API notes): cursor pagination by creation time, 422 for
malformed ids, 404 for unknown ones, ``200 null`` for a step without a trace. Two flavours:

``0.16.8``
    as recorded: ``GET /v1/steps/`` answers 400 to every call, and the ``GET /v1/runs/``
    cursors are swapped (with ``order=asc``, ``after=X`` answers the runs *before* X).
``cloud``
    a server where ``GET /v1/steps/`` works and every cursor is right; traces loaded from the
    fixtures get a ``latency_ms``.

Data comes from a :class:`LettaStore`: loaded from the fixture directory, added record by record,
or generated in bulk (``store.generate(10_000)``). Bodies are serialized once when added and
pages are found by bisecting sorted indexes, so a page costs O(page) however big the store.

Faults can be set while it runs: error statuses (with ``Retry-After``) for the next N requests or
for a path pattern, slow answers, malformed JSON, dropped connections, traces held back as
``null`` until released ("written later"), one step's trace served broken (truncated, not UTF-8,
nested 1000 deep: :meth:`FakeLetta.corrupt_trace`), and a required API key. Like servers behind
a proxy it can gzip its answers when asked (``gzip=True``) and send ``103 Early Hints`` before
each one (``early_hints=True``). Every request is recorded.

    with FakeLetta.from_fixtures(LETTA, flavour="0.16.8") as letta:
        letta.fail(429, times=2, retry_after=1)
        ... httpx.AsyncClient(base_url=letta.url) ...
        assert letta.requests[0].headers["user-agent"].startswith("letta-otel-exporter/")
"""

from __future__ import annotations

import bisect
import contextlib
import gzip as gzip_codec
import json
import random
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DEEP_LEVELS",
    "BrokenTrace",
    "FakeLetta",
    "Fault",
    "Flavour",
    "LettaStore",
    "RecordedRequest",
    "broken_trace_body",
]

Flavour = Literal["0.16.8", "cloud"]
#: How :meth:`FakeLetta.corrupt_trace` breaks a trace body.
BrokenTrace = Literal["truncated", "invalid_utf8", "deep"]
#: Levels of nested arrays in a ``deep`` trace: more than any JSON parser of the exporter reads.
DEEP_LEVELS: Final = 1000

_UUID4: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_STEP_ID: Final = re.compile(rf"^step-{_UUID4}$")
_AGENT_ID: Final = re.compile(rf"^agent-{_UUID4}$")
_RUN_ID: Final = re.compile(r"^run-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NULL: Final = b"null"
_Key = tuple[int, int, str]  # (created_at in µs since the epoch, insertion number, id)


class _JsonModel(Protocol):
    """A pydantic model (from exporter.models, say): anything that dumps itself as JSON."""

    def model_dump_json(self) -> str: ...


_Record = Mapping[str, Any] | _JsonModel


# ---------------------------------------------------------------------- helpers
def _micros(value: datetime) -> int:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _iso(micros: int) -> str:
    return _from_micros(micros).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _as_dict(record: _Record) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    data: dict[str, Any] = json.loads(record.model_dump_json())  # a pydantic model
    return data


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ---------------------------------------------------------------------- the store
@dataclass(slots=True)
class _StepEntry:
    key: _Key
    agent_id: str | None
    run_id: str | None
    model: str | None
    project_id: str | None
    status: str | None
    body: bytes
    trace: bytes
    metrics: bytes | None
    step_ns: int | None


@dataclass(slots=True)
class _RunEntry:
    key: _Key
    agent_id: str | None
    status: str | None
    data: dict[str, Any]
    body: bytes
    metrics: bytes | None
    steps: list[_Key] = field(default_factory=list)


class LettaStore:
    """The records a :class:`FakeLetta` serves, indexed for O(page) pagination.

    Thread-safe: tests and benchmarks may add records while the server answers.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = 0
        self._last_micros = 0
        self._steps: dict[str, _StepEntry] = {}
        self._runs: dict[str, _RunEntry] = {}
        self._agents: dict[str, bytes] = {}
        self._step_keys: list[_Key] = []
        self._steps_by_agent: dict[str, list[_Key]] = {}
        self._run_keys: list[_Key] = []
        self._runs_by_agent: dict[str, list[_Key]] = {}

    # ------------------------------------------------------------------ adding
    def add_agent(self, agent: _Record) -> str:
        """Add (or replace) an agent (``AgentState``; at least ``id``). Returns its id."""
        data = _as_dict(agent)
        data.setdefault("name", f"agent {data['id'][6:14]}")
        if data.get("tags") is None:
            data["tags"] = []
        data.setdefault("agent_type", "letta_v1_agent")
        data.setdefault("project_id", None)
        with self._lock:
            self._agents[data["id"]] = _dumps(data)
        return str(data["id"])

    def add_run(
        self,
        run: _Record,
        *,
        metrics: _Record | None = None,
    ) -> str:
        """Add a run (at least ``id``; ``created_at`` defaults to now). Returns its id."""
        data = _as_dict(run)
        with self._lock:
            created = data.get("created_at")
            micros = (
                _micros(_parse_time(created) if isinstance(created, str) else created)
                if created
                else self._next_micros(None)
            )
            data["created_at"] = created if isinstance(created, str) else _iso(micros)
            data.setdefault("status", "completed")
            key = self._key(micros, data["id"])
            entry = _RunEntry(
                key=key,
                agent_id=data.get("agent_id"),
                status=data.get("status"),
                data=data,
                body=_dumps(data),
                metrics=_dumps(_as_dict(metrics)) if metrics is not None else None,
            )
            old = self._runs.get(data["id"])
            if old is not None:
                entry.steps = old.steps
                self._unindex(self._run_keys, self._runs_by_agent, old.key, old.agent_id)
            self._runs[data["id"]] = entry
            self._index(self._run_keys, self._runs_by_agent, key, entry.agent_id)
            if entry.agent_id and entry.agent_id not in self._agents:
                self.add_agent({"id": entry.agent_id})
        return str(data["id"])

    def add_step(
        self,
        step: _Record,
        *,
        trace: _Record | None = None,
        metrics: _Record | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Add a step with its trace (``None``: the route answers ``null``) and metrics.

        Steps are ordered by ``created_at`` (default: just after the newest step so far), then by
        insertion. A missing run or agent is created (the run as completed, just before the step).
        Returns the step id.
        """
        data = _as_dict(step)
        trace_data = _as_dict(trace) if trace is not None else None
        metrics_data = _as_dict(metrics) if metrics is not None else None
        with self._lock:
            micros = self._next_micros(created_at)
            step_id = str(data["id"])
            run_id, agent_id = data.get("run_id"), data.get("agent_id")
            if run_id and run_id not in self._runs:
                self.add_run(
                    {
                        "id": run_id,
                        "agent_id": agent_id,
                        "status": "completed",
                        "created_at": _iso(micros - 1),
                    }
                )
            if agent_id and agent_id not in self._agents:
                tags = (trace_data or {}).get("agent_tags") or []
                self.add_agent({"id": agent_id, "tags": tags})
            key = self._key(micros, step_id)
            entry = _StepEntry(
                key=key,
                agent_id=agent_id,
                run_id=run_id,
                model=data.get("model"),
                project_id=data.get("project_id"),
                status=data.get("status"),
                body=_dumps(data),
                trace=_dumps(trace_data) if trace_data is not None else _NULL,
                metrics=_dumps(metrics_data) if metrics_data is not None else None,
                step_ns=(metrics_data or {}).get("step_ns"),
            )
            if (old := self._steps.pop(step_id, None)) is not None:
                self._unindex(self._step_keys, self._steps_by_agent, old.key, old.agent_id)
                if old.run_id in self._runs:
                    self._runs[old.run_id].steps.remove(old.key)
            self._steps[step_id] = entry
            self._index(self._step_keys, self._steps_by_agent, key, agent_id)
            if run_id:
                bisect.insort(self._runs[run_id].steps, key)
        return step_id

    def set_trace(self, step_id: str, trace: _Record | None) -> None:
        """Replace a step's trace (``None``: the route answers ``null``)."""
        with self._lock:
            entry = self._steps[step_id]
            entry.trace = _dumps(_as_dict(trace)) if trace is not None else _NULL

    def set_run_status(self, run_id: str, status: str) -> None:
        """Change a run's status (e.g. ``running`` -> ``completed``)."""
        with self._lock:
            entry = self._runs[run_id]
            entry.data["status"] = status
            entry.status = status
            entry.body = _dumps(entry.data)

    def generate(
        self,
        count: int,
        *,
        agents: int = 2,
        steps_per_run: int = 2,
        start: datetime | None = None,
        spacing: timedelta = timedelta(milliseconds=10),
        model: str = "gpt-4o-mini",
        with_traces: bool = True,
        seed: int = 0,
    ) -> list[str]:
        """Add ``count`` synthetic steps (OpenAI-shaped traces) over a few agents and runs.

        Args:
            count: steps to add.
            agents: agents they are spread over (round robin by run).
            steps_per_run: steps in each run.
            start: the first step's time (default: just after the newest step so far).
            spacing: time between consecutive steps.
            model: the steps' model.
            with_traces: give each step a trace (else the trace route answers ``null``).
            seed: ids are drawn from this seed, so a benchmark is reproducible.

        Returns:
            The new step ids, oldest first.
        """
        rng = random.Random(seed)
        agent_ids = [f"agent-{_uuid4(rng)}" for _ in range(max(agents, 1))]
        with self._lock:
            when = start or _from_micros(self._next_micros(None))
            ids: list[str] = []
            run_id = ""
            for index in range(count):
                if index % max(steps_per_run, 1) == 0:
                    run_id = f"run-{_uuid4(rng)}"
                    agent_id = agent_ids[(index // max(steps_per_run, 1)) % len(agent_ids)]
                    self.add_run(
                        {
                            "id": run_id,
                            "agent_id": agent_id,
                            "status": "completed",
                            "created_at": (when - timedelta(microseconds=1)).isoformat(),
                        }
                    )
                step_id = f"step-{_uuid4(rng)}"
                trace = _synthetic_trace(rng, step_id, run_id, agent_id, model, when)
                self.add_step(
                    _synthetic_step(step_id, run_id, agent_id, model),
                    trace=trace if with_traces else None,
                    metrics=_synthetic_metrics(step_id, run_id, agent_id),
                    created_at=when,
                )
                ids.append(step_id)
                when += spacing
        return ids

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_fixtures(cls, directory: Path | str, *, latency_ms: bool = False) -> LettaStore:
        """Load the recorded 0.16.8 fixtures (``steps/``, ``runs/``).

        Steps have no time on 0.16.8, so each gets one from its trace (``created_at`` minus the
        LLM request time) and its run; runs missing from the recorded runs list are made up from
        their steps. Agents are made from the agent ids (tags from the traces).

        Args:
            directory: ``tests/fixtures/letta-0.16.8``.
            latency_ms: add ``latency_ms`` to the traces, as Letta Cloud sends it.
        """
        root = Path(directory)
        store = cls()
        recorded: dict[str, dict[str, Any]] = {}
        for path in sorted((root / "steps").glob("step-*.json")):
            recorded[path.stem] = json.loads(path.read_bytes())
        runs: dict[str, dict[str, Any]] = {}
        for name in ("runs_list_page1.json", "runs_list_page2.json"):
            path = root / "runs" / name
            if path.exists():
                for run in json.loads(path.read_bytes()):
                    runs.setdefault(run["id"], run)
        retrieved = root / "runs" / "run_retrieve_example.json"
        template: dict[str, Any] = json.loads(retrieved.read_bytes()) if retrieved.exists() else {}
        run_metrics: dict[str, Any] = {}
        metrics_path = root / "runs" / "run_metrics_example.json"
        if metrics_path.exists():
            example = json.loads(metrics_path.read_bytes())
            run_metrics[example["id"]] = example
        # Each run's steps in the recorded order (oldest first).
        run_steps: dict[str, list[str]] = {}
        for path in sorted((root / "runs" / "run_steps").glob("run-*.json")):
            run_steps[path.stem] = [s["id"] for s in json.loads(path.read_bytes())]
        for step_id, rec in recorded.items():
            run_id = rec["step"].get("run_id")
            if run_id and step_id not in run_steps.setdefault(run_id, []):
                run_steps[run_id].append(step_id)

        def step_start(step_id: str) -> int | None:
            rec = recorded.get(step_id)
            trace = rec.get("trace") if rec else None
            if not trace or not trace.get("created_at"):
                return None
            llm_ns = (rec or {}).get("metrics", {}) or {}
            return (
                _micros(_parse_time(trace["created_at"]))
                - (llm_ns.get("llm_request_ns") or 0) // 1000
            )

        for rec in recorded.values():
            agent_id = rec["step"].get("agent_id")
            if agent_id and agent_id not in store._agents:
                store.add_agent(
                    {"id": agent_id, "tags": (rec.get("trace") or {}).get("agent_tags")}
                )
        known = [t for s in recorded if (t := step_start(s)) is not None]
        unknown_time = (max(known) if known else _micros(datetime.now(UTC))) + 1_000_000
        plan: list[tuple[int, str, list[str]]] = []
        for run_id, step_ids in run_steps.items():
            starts = [t for s in step_ids if (t := step_start(s)) is not None]
            if run_id in runs:
                first = _micros(_parse_time(runs[run_id]["created_at"]))
            else:
                first = (min(starts) if starts else unknown_time) - 100_000
                unknown_time += 1_000_000 if not starts else 0
            plan.append((first, run_id, step_ids))
        for first, run_id, step_ids in sorted(plan):
            steps = [recorded[s] for s in step_ids if s in recorded]
            run = runs.get(run_id) or _made_up_run(template, run_id, first, steps)
            store.add_run(run, metrics=run_metrics.get(run_id))
            previous = first
            for rec in steps:
                start = step_start(rec["step"]["id"])
                micros = max(start if start is not None else previous + 1000, previous + 1)
                trace = rec.get("trace")
                if trace is not None and latency_ms:
                    llm_ns = (rec.get("metrics") or {}).get("llm_request_ns")
                    trace = dict(trace, latency_ms=(llm_ns or 0) // 1_000_000)
                store.add_step(
                    rec["step"],
                    trace=trace,
                    metrics=rec.get("metrics"),
                    created_at=_from_micros(micros),
                )
                previous = micros
        return store

    # ------------------------------------------------------------------ reading
    def step_ids(self) -> list[str]:
        """Every step id, oldest first."""
        with self._lock:
            return [key[2] for key in self._step_keys]

    def run_ids(self) -> list[str]:
        """Every run id, oldest first."""
        with self._lock:
            return [key[2] for key in self._run_keys]

    def run_step_ids(self, run_id: str) -> list[str]:
        """A run's step ids, oldest first."""
        with self._lock:
            return [key[2] for key in self._runs[run_id].steps]

    def __len__(self) -> int:
        return len(self._steps)

    # ------------------------------------------------------------------ internals
    def _next_micros(self, created_at: datetime | None) -> int:
        micros = (
            _micros(created_at)
            if created_at is not None
            else max(_micros(datetime.now(UTC)), self._last_micros + 1)
        )
        self._last_micros = max(self._last_micros, micros)
        return micros

    def _key(self, micros: int, record_id: str) -> _Key:
        self._seq += 1
        return (micros, self._seq, record_id)

    @staticmethod
    def _index(keys: list[_Key], by_agent: dict[str, list[_Key]], key: _Key, agent: Any) -> None:
        bisect.insort(keys, key)
        if agent:
            bisect.insort(by_agent.setdefault(agent, []), key)

    @staticmethod
    def _unindex(keys: list[_Key], by_agent: dict[str, list[_Key]], key: _Key, agent: Any) -> None:
        keys.pop(bisect.bisect_left(keys, key))
        if agent and agent in by_agent:
            lst = by_agent[agent]
            lst.pop(bisect.bisect_left(lst, key))


def _made_up_run(
    template: Mapping[str, Any], run_id: str, micros: int, steps: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    failed = any(s["step"].get("status") == "failed" for s in steps)
    run = dict(template)
    run.update(
        id=run_id,
        agent_id=steps[0]["step"].get("agent_id") if steps else None,
        status="failed" if failed else "completed",
        created_at=_iso(micros),
        completed_at=_iso(micros + 500_000).removesuffix("Z"),  # 0.16.8 writes it naive
        stop_reason="error" if failed else "end_turn",
    )
    return run


def _synthetic_step(step_id: str, run_id: str, agent_id: str, model: str) -> dict[str, Any]:
    return {
        "id": step_id,
        "origin": None,
        "organization_id": "org-00000000-0000-4000-8000-000000000000",
        "provider_id": None,
        "run_id": run_id,
        "agent_id": agent_id,
        "provider_name": "openai",
        "provider_category": "base",
        "model": model,
        "model_handle": f"openai/{model}",
        "model_endpoint": "https://api.openai.com/v1",
        "context_window_limit": 128000,
        "completion_tokens": 12,
        "prompt_tokens": 100,
        "total_tokens": 112,
        "stop_reason": "end_turn",
        "status": "success",
        "tags": [],
        "trace_id": None,
        "project_id": None,
    }


def _synthetic_trace(
    rng: random.Random, step_id: str, run_id: str, agent_id: str, model: str, when: datetime
) -> dict[str, Any]:
    return {
        "id": f"provider_trace-{_uuid4(rng)}",
        "request_json": {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a helpful agent."},
                {"role": "user", "content": f"Question for {step_id}"},
            ],
            "temperature": 0.7,
        },
        "response_json": {
            "id": f"chatcmpl-{rng.getrandbits(64):016x}",
            "object": "chat.completion",
            "created": int(when.timestamp()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "An answer."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
        },
        "step_id": step_id,
        "agent_id": agent_id,
        "agent_tags": [],
        "call_type": "agent_step",
        "run_id": run_id,
        "source": "memgpt-server",
        "org_id": "org-00000000-0000-4000-8000-000000000000",
        "user_id": "user-00000000-0000-4000-8000-000000000000",
        "llm_config": {"model": model, "model_endpoint_type": "openai"},
        "billing_context": None,
        "created_at": (when + timedelta(milliseconds=5)).isoformat().replace("+00:00", "Z"),
    }


def _synthetic_metrics(step_id: str, run_id: str, agent_id: str) -> dict[str, Any]:
    return {
        "id": step_id,
        "run_id": run_id,
        "agent_id": agent_id,
        "step_start_ns": None,
        "llm_request_start_ns": None,
        "llm_request_ns": 4_000_000,
        "tool_execution_ns": None,
        "step_ns": 5_000_000,
    }


# ---------------------------------------------------------------------- requests and faults
@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake server received.

    Attributes:
        method: ``GET``, ...
        path: the path without the query.
        query: the query parameters (a repeated key has several values).
        headers: the headers, names in lower case.
        client_port: the client's port: one per connection, so it shows keep-alive reuse.
    """

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    headers: Mapping[str, str]
    client_port: int = 0

    def param(self, name: str) -> str | None:
        """The first value of a query parameter, or ``None``."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Fault:
    """What to do instead of answering normally.

    Args:
        status: the status to answer.
        times: how many matching requests get it (``None``: until cleared).
        path: a regular expression searched in the request path (``None``: every path).
        retry_after: the ``Retry-After`` header value, if any.
        body: the body (default: ``{"detail": "<fault>"}``).
        delay: seconds to wait before answering.
        drop: close the connection without answering (the client sees a network error).
        rate: the share of matching requests that get it (``0.7``: an error storm where 3 calls
            in 10 still succeed), drawn from ``seed``.
        seed: the draw's seed, so a storm is the same on every run.
    """

    status: int = 500
    times: int | None = 1
    path: str | None = None
    retry_after: str | None = None
    body: bytes | None = None
    delay: float = 0.0
    drop: bool = False
    hits: int = 0
    rate: float = 1.0
    seed: int = 0
    _draw: random.Random | None = None

    def matches(self, path: str) -> bool:
        """Whether this fault applies to ``path`` (and has uses left)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.path is not None and re.search(self.path, path) is None:
            return False
        if self.rate >= 1.0:
            return True
        if self._draw is None:
            self._draw = random.Random(self.seed)
        return self._draw.random() < self.rate


_Answer = tuple[int, bytes, dict[str, str]]


def _detail(message: str) -> bytes:
    return _dumps({"detail": message})


def _pattern_422(where: str, name: str, value: str, prefix: str, example: str) -> bytes:
    # The shape 0.16.8 answers for a malformed id (errors/bad_ids.json).
    pattern = f"^{prefix}-{_UUID4}$"
    detail = (
        f"[{{'type': 'string_pattern_mismatch', 'loc': ('{where}', '{name}'), "
        f"'msg': \"String should match pattern '{prefix}-{{uuid4}}'\", 'input': {value!r}, "
        f"'ctx': {{'pattern': {pattern!r}}}}}]"
    )
    return _dumps({"trace_id": "", "detail": detail, "examples": [example]})


class _BadQueryError(Exception):
    """A query parameter FastAPI would refuse with 422."""

    def __init__(self, body: bytes) -> None:
        super().__init__("bad query")
        self.body = body


def _query_422(kind: str, name: str, msg: str, value: str, ctx: str = "") -> _BadQueryError:
    extra = f", 'ctx': {ctx}" if ctx else ""
    detail = (
        f"[{{'type': '{kind}', 'loc': ('query', '{name}'), 'msg': {msg!r}, "
        f"'input': {value!r}{extra}}}]"
    )
    return _BadQueryError(_dumps({"trace_id": "", "detail": detail}))


class _Query:
    def __init__(self, query: Mapping[str, Sequence[str]]) -> None:
        self._q = query

    def get(self, name: str) -> str | None:
        values = self._q.get(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return list(self._q.get(name, ()))

    def order(self) -> bool:
        """True for ascending (the default is descending)."""
        value = self.get("order") or "desc"
        if value not in ("asc", "desc"):
            raise _query_422(
                "literal_error",
                "order",
                "Input should be 'asc' or 'desc'",
                value,
                "{'expected': \"'asc' or 'desc'\"}",
            )
        return value == "asc"

    def limit(self, default: int, *, maximum: int | None = None) -> int:
        value = self.get("limit")
        if value is None:
            return default
        try:
            limit = int(value)
        except ValueError:
            raise _query_422(
                "int_parsing",
                "limit",
                "Input should be a valid integer, unable to parse string as an integer",
                value,
            ) from None
        if limit < 1 or (maximum is not None and limit > maximum):
            raise _query_422(
                "less_than_equal" if limit > 1 else "greater_than_equal",
                "limit",
                f"Input should be between 1 and {maximum or 'any'}",
                value,
            )
        return limit

    def time(self, name: str) -> datetime | None:
        value = self.get(name)
        if value is None:
            return None
        try:
            return _parse_time(value)
        except ValueError:
            raise _query_422(
                "datetime_parsing", name, "Input should be a valid datetime", value
            ) from None

    def flag(self, name: str) -> bool | None:
        value = self.get(name)
        return None if value is None else value.lower() in ("1", "true", "yes", "on")


def _page(
    keys: Sequence[_Key],
    *,
    ascending: bool,
    after: _Key | None,
    before: _Key | None,
    limit: int,
    lo: int = 0,
    hi: int | None = None,
    keep: Callable[[str], bool] | None = None,
) -> list[str]:
    """Letta's cursor paging: ``after``/``before`` are "next"/"previous" in the sort order."""
    hi = len(keys) if hi is None else hi
    if ascending:
        if after is not None:
            lo = max(lo, bisect.bisect_right(keys, after))
        if before is not None:
            hi = min(hi, bisect.bisect_left(keys, before))
        indexes: Iterable[int] = range(lo, hi)
    else:
        if after is not None:
            hi = min(hi, bisect.bisect_left(keys, after))
        if before is not None:
            lo = max(lo, bisect.bisect_right(keys, before))
        indexes = range(hi - 1, lo - 1, -1)
    found: list[str] = []
    for index in indexes:
        record_id = keys[index][2]
        if keep is None or keep(record_id):
            found.append(record_id)
            if len(found) >= limit:
                break
    return found


def _join(bodies: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(bodies) + b"]"


def broken_trace_body(kind: BrokenTrace, good: bytes, step_id: str) -> bytes:
    """A trace body broken the way ``kind`` says (``good`` is the step's real one, if any)."""
    if kind == "truncated":
        whole = good if len(good) > 8 else _dumps({"step_id": step_id, "request_json": {}})
        return whole[: len(whole) // 2]
    if kind == "invalid_utf8":
        return (
            b'{"step_id": "' + step_id.encode() + b'", "request_json": {"model": "\xff\xfe"},'
            b' "response_json": {}}'
        )
    nested = b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS
    return (
        b'{"step_id": "' + step_id.encode() + b'", "request_json": {"messages": ' + nested + b"},"
        b' "response_json": {}}'
    )


# ---------------------------------------------------------------------- the server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeLetta

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (killed, timed out) is normal for a test double; anything
        # else is printed as the stdlib does.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection's thread ends after this
    # Headers and body go out in two writes: without this, Nagle's algorithm and the client's
    # delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        """Every route is a GET (other methods get http.server's 501)."""
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeLetta.requests` instead."""


_ROUTES: Final = [
    (re.compile(r"^/v1/health/?$"), "health"),
    (re.compile(r"^/v1/steps/?$"), "list_steps"),
    (re.compile(r"^/v1/steps/(?P<id>[^/]+)/?$"), "step"),
    (re.compile(r"^/v1/steps/(?P<id>[^/]+)/trace/?$"), "trace"),
    (re.compile(r"^/v1/steps/(?P<id>[^/]+)/metrics/?$"), "step_metrics"),
    (re.compile(r"^/v1/runs/?$"), "list_runs"),
    (re.compile(r"^/v1/runs/(?P<id>[^/]+)/?$"), "run"),
    (re.compile(r"^/v1/runs/(?P<id>[^/]+)/steps/?$"), "run_steps"),
    (re.compile(r"^/v1/runs/(?P<id>[^/]+)/metrics/?$"), "run_metrics"),
    (re.compile(r"^/v1/agents/(?P<id>[^/]+)/?$"), "agent"),
]


class FakeLetta:
    """A fake Letta server on ``127.0.0.1`` (a free port), HTTP/1.1 with keep-alive.

    Use it as a context manager (or :meth:`start` / :meth:`stop`); :attr:`url` is its base URL.

    Args:
        store: the data to serve (default: empty).
        flavour: ``0.16.8`` (as recorded: steps list broken, runs cursors swapped) or ``cloud``.
        api_key: when set, every route but ``/v1/health/`` needs ``Authorization: Bearer <key>``
            (else 401), like a server started with ``--secure``.
        port: the port to listen on (0: a free one).
        gzip: gzip every answer whose request says ``Accept-Encoding: gzip``, like a
            compressing proxy.
        early_hints: send a ``103 Early Hints`` informational answer before every answer.
    """

    def __init__(
        self,
        store: LettaStore | None = None,
        *,
        flavour: Flavour = "0.16.8",
        api_key: str | None = None,
        port: int = 0,
        gzip: bool = False,
        early_hints: bool = False,
    ) -> None:
        self._port = port
        self.store = store if store is not None else LettaStore()
        self.flavour: Flavour = flavour
        self.api_key = api_key
        self.gzip = gzip
        self.early_hints = early_hints
        self._broken: dict[str, BrokenTrace] = {}
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._delays: list[tuple[str | None, float]] = []
        self._held: set[str] = set()
        self._hold_all = False
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @classmethod
    def from_fixtures(
        cls,
        directory: Path | str,
        *,
        flavour: Flavour = "0.16.8",
        api_key: str | None = None,
        port: int = 0,
    ) -> FakeLetta:
        """A server with the recorded fixtures loaded (see :meth:`LettaStore.from_fixtures`)."""
        store = LettaStore.from_fixtures(directory, latency_ms=flavour == "cloud")
        return cls(store, flavour=flavour, api_key=api_key, port=port)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        if self._server is None:
            raise RuntimeError("the fake Letta server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeLetta:
        """Start serving in a background thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-letta",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLetta:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def add_fault(self, fault: Fault) -> Fault:
        """Apply ``fault`` to the matching requests (faults are tried in the order added)."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        path: str | None = None,
        retry_after: float | str | None = None,
        body: bytes | None = None,
    ) -> Fault:
        """Answer ``status`` to the next ``times`` requests (matching ``path``, a regex)."""
        header = None
        if retry_after is not None:
            header = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        return self.add_fault(
            Fault(status=status, times=times, path=path, retry_after=header, body=body)
        )

    def malformed(
        self, *, times: int | None = 1, path: str | None = None, body: bytes = b'{"id": "step-'
    ) -> Fault:
        """Answer 200 with a body that is not JSON."""
        return self.add_fault(Fault(status=200, times=times, path=path, body=body))

    def drop(self, *, times: int | None = 1, path: str | None = None) -> Fault:
        """Close the connection without answering."""
        return self.add_fault(Fault(times=times, path=path, drop=True))

    def slow(self, seconds: float, *, path: str | None = None) -> None:
        """Delay every answer (to ``path``, a regex) by ``seconds`` until :meth:`clear_faults`."""
        with self._lock:
            self._delays.append((path, seconds))

    def clear_faults(self) -> None:
        """Remove every fault and delay (held traces stay held)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def corrupt_trace(self, step_id: str, kind: BrokenTrace | None) -> None:
        """Serve this step's trace broken (``None``: serve it intact again).

        ``truncated`` cuts the real body in half, ``invalid_utf8`` puts bytes that are not UTF-8
        in a string, ``deep`` nests :data:`DEEP_LEVELS` arrays in ``request_json``. The answer
        stays ``200``, as from a server or a proxy that mangles one record.
        """
        with self._lock:
            if kind is None:
                self._broken.pop(step_id, None)
            else:
                self._broken[step_id] = kind

    def hold_traces(self, *step_ids: str) -> None:
        """Answer ``null`` for these steps' traces (none given: all) until released."""
        with self._lock:
            if step_ids:
                self._held.update(step_ids)
            else:
                self._hold_all = True

    def release_traces(self, *step_ids: str) -> None:
        """Serve these traces again (none given: all)."""
        with self._lock:
            if step_ids:
                self._held.difference_update(step_ids)
            else:
                self._held.clear()
                self._hold_all = False

    # ------------------------------------------------------------------ observation
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The requests whose path matches ``path`` (a regex, searched)."""
        return [r for r in self.requests if re.search(path, r.path)]

    def clear_requests(self) -> None:
        """Forget the recorded requests and the in-flight maximum."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests being handled at once so far."""
        return self._max_in_flight

    # ------------------------------------------------------------------ handling
    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        query = {k: tuple(v) for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length:
            handler.rfile.read(length)
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    handler.command, split.path, query, headers, handler.client_address[1]
                )
            )
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            fault = next((f for f in self._faults if f.matches(split.path)), None)
            if fault is not None:
                fault.hits += 1
            delay = sum(s for p, s in self._delays if p is None or re.search(p, split.path))
        try:
            delay += fault.delay if fault is not None else 0.0
            if delay > 0:
                time.sleep(delay)
            if fault is not None and fault.drop:
                handler.close_connection = True
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None:
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                body = fault.body if fault.body is not None else _detail(f"fault {fault.status}")
                answer: _Answer = (fault.status, body, extra)
            elif self.api_key is not None and not self._authorized(split.path, headers):
                answer = (401, _detail("Unauthorized"), {})
            else:
                answer = self._route(split.path, _Query(query))
            self._send(handler, answer, headers)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _authorized(self, path: str, headers: Mapping[str, str]) -> bool:
        if re.match(r"^/v1/health/?$", path):
            return True  # a --secure Letta leaves its health check open
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def _send(self, handler: _Handler, answer: _Answer, headers: Mapping[str, str]) -> None:
        status, body, extra = answer
        if self.gzip and "gzip" in headers.get("accept-encoding", "").lower():
            body = gzip_codec.compress(body, compresslevel=1)
            extra = {**extra, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        try:
            if self.early_hints:
                handler.send_response_only(103)
                handler.send_header("Link", "</v1/health/>; rel=preload")
                handler.end_headers()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            handler.close_connection = True

    def _route(self, path: str, query: _Query) -> _Answer:
        for pattern, name in _ROUTES:
            if match := pattern.match(path):
                try:
                    answer: _Answer = getattr(self, f"_r_{name}")(query, *match.groups())
                except _BadQueryError as exc:
                    return 422, exc.body, {}
                return answer
        return 404, _detail("Not Found"), {}

    # ------------------------------------------------------------------ routes
    def _r_health(self, query: _Query) -> _Answer:
        version = "0.16.8" if self.flavour == "0.16.8" else "1.0.0"
        return 200, _dumps({"version": version, "status": "ok"}), {}

    def _r_list_steps(self, query: _Query) -> _Answer:
        ascending = query.order()
        limit = query.limit(50)
        if self.flavour == "0.16.8":
            # The recorded bug: every valid call fails (errors/steps_list_400.json).
            flag = "True" if ascending else "False"
            return (
                400,
                _detail(
                    f"Argument order does not match type typing.Optional[str]; "
                    f"is {flag} of type <class 'bool'>"
                ),
                {},
            )
        start, end = query.time("start_date"), query.time("end_date")
        store = self.store
        with store._lock:
            agent = query.get("agent_id")
            keys = store._steps_by_agent.get(agent, []) if agent else store._step_keys
            cursors: dict[str, _Key | None] = {}
            for name in ("after", "before"):
                value = query.get(name)
                entry = store._steps.get(value) if value else None
                if value and entry is None:
                    return 404, _detail(f"Step not found with id='{value}'"), {}
                cursors[name] = entry.key if entry is not None else None
            lo = bisect.bisect_left(keys, (_micros(start) + 1,)) if start else 0
            hi = bisect.bisect_left(keys, (_micros(end),)) if end else len(keys)
            model, project = query.get("model"), query.get("project_id")

            def keep(step_id: str) -> bool:
                entry = store._steps[step_id]
                return (model is None or entry.model == model) and (
                    project is None or entry.project_id == project
                )

            ids = _page(
                keys,
                ascending=ascending,
                after=cursors["after"],
                before=cursors["before"],
                limit=limit,
                lo=lo,
                hi=hi,
                keep=keep if model or project else None,
            )
            return 200, _join(store._steps[i].body for i in ids), {}

    def _step_id_error(self, step_id: str) -> _Answer | None:
        if _STEP_ID.match(step_id):
            return None
        example = "step-123e4567-e89b-42d3-8456-426614174000"
        return 422, _pattern_422("path", "step_id", step_id, "step", example), {}

    def _r_step(self, query: _Query, step_id: str) -> _Answer:
        if (error := self._step_id_error(step_id)) is not None:
            return error
        entry = self.store._steps.get(step_id)
        if entry is None:
            return 404, _detail(f"Step not found with id='['{step_id}']'"), {}
        return 200, entry.body, {}

    def _r_trace(self, query: _Query, step_id: str) -> _Answer:
        if (error := self._step_id_error(step_id)) is not None:
            return error
        entry = self.store._steps.get(step_id)
        with self._lock:
            held = self._hold_all or step_id in self._held
            broken = self._broken.get(step_id)
        if broken is not None:
            good = entry.trace if entry is not None else b""
            return 200, broken_trace_body(broken, good, step_id), {}
        # Unknown step, no trace, or one "not written yet": all 200 null on a real server.
        return 200, (entry.trace if entry is not None and not held else _NULL), {}

    def _r_step_metrics(self, query: _Query, step_id: str) -> _Answer:
        if (error := self._step_id_error(step_id)) is not None:
            return error
        entry = self.store._steps.get(step_id)
        if entry is None or entry.metrics is None:
            return 404, _detail(f"StepMetrics not found with id='['{step_id}']'"), {}
        return 200, entry.metrics, {}

    def _r_list_runs(self, query: _Query) -> _Answer:
        ascending = query.order()
        limit = query.limit(100, maximum=1000)
        agents = set(query.all("agent_ids"))
        if query.get("agent_id"):
            agents.add(str(query.get("agent_id")))
        statuses = set(query.all("statuses"))
        if query.flag("active"):
            statuses |= {"created", "running"}
        after_name, before_name = "after", "before"
        if self.flavour == "0.16.8":
            after_name, before_name = "before", "after"  # the recorded bug
        store = self.store
        with store._lock:
            keys = (
                store._runs_by_agent.get(next(iter(agents)), [])
                if len(agents) == 1
                else store._run_keys
            )
            cursors: dict[str, _Key | None] = {}
            for name in ("after", "before"):
                value = query.get(name)
                entry = store._runs.get(value) if value else None
                if value and entry is None:
                    return 404, _detail(f"Run not found with id='['{value}']'"), {}
                cursors[name] = entry.key if entry is not None else None

            def keep(run_id: str) -> bool:
                entry = store._runs[run_id]
                return (not agents or entry.agent_id in agents) and (
                    not statuses or entry.status in statuses
                )

            ids = _page(
                keys,
                ascending=ascending,
                after=cursors[after_name],
                before=cursors[before_name],
                limit=limit,
                keep=keep if len(agents) > 1 or statuses else None,
            )
            return 200, _join(store._runs[i].body for i in ids), {}

    def _run_entry(self, run_id: str) -> _RunEntry | _Answer:
        if not _RUN_ID.match(run_id):
            message = (
                f"INVALID_ARGUMENT: Invalid run ID format: {run_id}. Expected format: 'run-<uuid4>'"
            )
            return 400, _detail(message), {}
        entry = self.store._runs.get(run_id)
        if entry is None:
            return 404, _detail(f"Run not found with id='['{run_id}']'"), {}
        return entry

    def _r_run(self, query: _Query, run_id: str) -> _Answer:
        entry = self._run_entry(run_id)
        return entry if isinstance(entry, tuple) else (200, entry.body, {})

    def _r_run_steps(self, query: _Query, run_id: str) -> _Answer:
        entry = self._run_entry(run_id)
        if isinstance(entry, tuple):
            return entry
        ascending = query.order()
        limit = query.limit(100)
        store = self.store
        with store._lock:
            cursors: dict[str, _Key | None] = {}
            for name in ("after", "before"):
                value = query.get(name)
                step = store._steps.get(value) if value else None
                if value and step is None:
                    return 404, _detail(f"Step not found with id='{value}'"), {}
                cursors[name] = step.key if step is not None else None
            ids = _page(
                entry.steps,
                ascending=ascending,
                after=cursors["after"],
                before=cursors["before"],
                limit=limit,
            )
            return 200, _join(store._steps[i].body for i in ids), {}

    def _r_run_metrics(self, query: _Query, run_id: str) -> _Answer:
        entry = self._run_entry(run_id)
        if isinstance(entry, tuple):
            return entry
        if entry.metrics is not None:
            return 200, entry.metrics, {}
        with self.store._lock:
            steps = [self.store._steps[k[2]] for k in entry.steps]
        metrics = {
            "id": run_id,
            "organization_id": "org-00000000-0000-4000-8000-000000000000",
            "agent_id": entry.agent_id,
            "project_id": None,
            "run_start_ns": entry.key[0] * 1000,
            "run_ns": sum(s.step_ns or 0 for s in steps) or None,
            "num_steps": len(steps),
            "tools_used": None,
            "template_id": None,
            "base_template_id": None,
        }
        return 200, _dumps(metrics), {}

    def _r_agent(self, query: _Query, agent_id: str) -> _Answer:
        if not _AGENT_ID.match(agent_id):
            example = "agent-123e4567-e89b-42d3-8456-426614174000"
            return 422, _pattern_422("path", "agent_id", agent_id, "agent", example), {}
        body = self.store._agents.get(agent_id)
        if body is None:
            return 404, _detail(f"Agent not found with id='['{agent_id}']'"), {}
        return 200, body, {}
