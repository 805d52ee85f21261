"""A synthetic backlog of steps with provider traces, shaped like the recorded fixtures.

Every generated step copies one of the 22 recorded (step, trace, metrics) triples of
``tests/fixtures/letta-0.16.8/steps`` in turn (OpenAI and Anthropic, non-streaming and streaming,
tool calls, provider errors) with fresh ids, and its ``request_json`` resized to a target size:
the tools list and system prompt are cut for small sizes, and conversation history is added for
large ones, the way a long-running agent's requests grow. The resized request of each shape is
built once, so generating 100,000 steps costs little more than serializing them.

The generator also knows what the exporter must send: one LLM span per trace and one
``invoke_agent`` span per run, with ids computed by :mod:`exporter.convert`.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from exporter.convert import run_span_id_for, span_id_for, trace_id_for_run
from testkit import LettaStore

__all__ = ["SIZES", "Backlog", "BacklogSpec", "build_store", "expected_span_ids", "sized_request"]

FIXTURES: Final = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "letta-0.16.8"

#: Target ``request_json`` sizes (bytes of compact JSON).
SIZES: Final = {"2kb": 2_000, "20kb": 20_000, "200kb": 200_000}

_WORDS: Final = [
    "the",
    "agent",
    "keeps",
    "a",
    "memory",
    "of",
    "what",
    "the",
    "user",
    "said",
    "about",
    "the",
    "project",
    "and",
    "answers",
    "with",
    "care",
    "while",
    "calling",
    "tools",
    "to",
    "search",
    "the",
    "archive",
    "edit",
    "core",
    "memory",
    "blocks",
    "and",
    "send",
    "messages",
    "back",
    "to",
    "the",
    "user",
    "who",
    "asked",
    "about",
    "context",
    "windows",
    "token",
    "budgets",
    "latency",
    "and",
    "cost",
    "of",
    "each",
    "call",
]


@dataclass(frozen=True, slots=True)
class BacklogSpec:
    """What to generate.

    Args:
        traces: steps (each with a trace) to generate.
        size: ``2kb``, ``20kb`` or ``200kb`` (request_json size).
        steps_per_run: steps in each run (runs are ``completed``, so their parents are emitted).
        agents: agents the runs are spread over.
        latency_ms: give traces ``latency_ms`` as Letta Cloud does (without it the exporter also
            asks ``/v1/steps/{id}/metrics`` for the timing, as on self-hosted 0.16.8).
        seed: ids are drawn from it, so runs are reproducible.
    """

    traces: int
    size: str = "20kb"
    steps_per_run: int = 2
    agents: int = 4
    latency_ms: bool = True
    seed: int = 0

    @property
    def runs(self) -> int:
        return -(-self.traces // self.steps_per_run)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the store holds, in the terms the receiver sees."""

    spec: BacklogSpec
    trace_ids: list[str]  # provider trace ids, oldest first
    run_ids: list[str]
    trace_runs: list[str]  # run id of each trace
    request_bytes: dict[str, int]  # per shape: the resized request_json size


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _filler(rng: random.Random, length: int) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def _is_anthropic(request: dict[str, Any]) -> bool:
    return "system" in request or "max_tokens" in request


def _message(anthropic: bool, role: str, text: str) -> dict[str, Any]:
    if anthropic:
        return {"role": role, "content": [{"type": "text", "text": text}]}
    return {"role": role, "content": text}


def _system_text(request: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The dict and key holding the system prompt text, to cut it."""
    system = request.get("system")
    if isinstance(system, list) and system and isinstance(system[0], dict) and "text" in system[0]:
        return system[0], "text"
    if isinstance(system, str):
        return request, "system"
    messages = request.get("messages") or []
    if (
        messages
        and messages[0].get("role") == "system"
        and isinstance(messages[0].get("content"), str)
    ):
        return messages[0], "content"
    return None


def sized_request(request: dict[str, Any], target: int, *, seed: int = 0) -> dict[str, Any]:
    """``request`` resized to about ``target`` bytes of compact JSON (within 1%).

    Smaller: tools are dropped, then the system prompt is cut, then old history. Larger:
    user/assistant history turns of up to 2 KB are added before the last message.
    """
    rng = random.Random(seed)
    req = copy.deepcopy(request)
    anthropic = _is_anthropic(req)
    size = len(_compact(req))
    tools = req.get("tools")
    while size > target and isinstance(tools, list) and tools:
        tools.pop()
        size = len(_compact(req))
    if size > target and (found := _system_text(req)) is not None:
        holder, key = found
        text = holder[key]
        holder[key] = text[: max(0, len(text) - (size - target))]
        size = len(_compact(req))
    messages = req.setdefault("messages", [])
    while size > target and len(messages) > 2:
        del messages[1]
        size = len(_compact(req))
    turn = 0
    while size < target - 8:
        role = "user" if turn % 2 == 0 else "assistant"
        # The text's JSON overhead is ~40 bytes per message.
        want = min(2000, target - size - 60)
        if want <= 0:
            break
        messages.insert(max(len(messages) - 1, 0), _message(anthropic, role, _filler(rng, want)))
        turn += 1
        size = len(_compact(req))
    return req


def _load_shapes() -> list[dict[str, Any]]:
    shapes = []
    for path in sorted((FIXTURES / "steps").glob("step-*.json")):
        record = json.loads(path.read_bytes())
        if record.get("trace") is not None:
            shapes.append(record)
    if not shapes:
        raise FileNotFoundError(f"no recorded steps with traces under {FIXTURES / 'steps'}")
    return shapes


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def build_store(spec: BacklogSpec) -> tuple[LettaStore, Backlog]:
    """Generate the backlog into a :class:`LettaStore` (call it in the fake server's process).

    Returns:
        The store and what it holds.
    """
    if spec.size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    target = SIZES[spec.size]
    rng = random.Random(spec.seed)
    shapes = _load_shapes()
    requests = [
        sized_request(s["trace"]["request_json"], target, seed=i) for i, s in enumerate(shapes)
    ]
    store = LettaStore()
    agent_ids = [f"agent-{_uuid(rng)}" for _ in range(max(spec.agents, 1))]
    for index, agent_id in enumerate(agent_ids):
        store.add_agent({"id": agent_id, "name": f"bench agent {index}", "tags": ["bench"]})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    when = start
    trace_ids: list[str] = []
    run_ids: list[str] = []
    trace_runs: list[str] = []
    run_id = agent_id = ""
    for index in range(spec.traces):
        shape_index = index % len(shapes)
        shape = shapes[shape_index]
        if index % spec.steps_per_run == 0:
            run_id = f"run-{_uuid(rng)}"
            agent_id = agent_ids[len(run_ids) % len(agent_ids)]
            steps_left = min(spec.steps_per_run, spec.traces - index)
            store.add_run(
                {
                    "id": run_id,
                    "agent_id": agent_id,
                    "status": "completed",
                    "stop_reason": "end_turn",
                    "background": False,
                    "created_at": _iso(when - timedelta(microseconds=10)),
                    "completed_at": _iso(when + timedelta(milliseconds=10 * steps_left)),
                }
            )
            run_ids.append(run_id)
        step_id = f"step-{_uuid(rng)}"
        trace_id = f"provider_trace-{_uuid(rng)}"
        step = dict(shape["step"], id=step_id, run_id=run_id, agent_id=agent_id)
        step["created_at"] = _iso(when)
        metrics = dict(shape.get("metrics") or {}, id=step_id, run_id=run_id, agent_id=agent_id)
        trace = dict(
            shape["trace"],
            id=trace_id,
            step_id=step_id,
            run_id=run_id,
            agent_id=agent_id,
            agent_tags=["bench"],
            request_json=requests[shape_index],
            created_at=_iso(when + timedelta(milliseconds=5)),
            updated_at=_iso(when + timedelta(milliseconds=6)),
        )
        if spec.latency_ms:
            trace["latency_ms"] = (metrics.get("llm_request_ns") or 4_000_000) // 1_000_000
        store.add_step(step, trace=trace, metrics=metrics, created_at=when)
        trace_ids.append(trace_id)
        trace_runs.append(run_id)
        when += timedelta(milliseconds=10)
    sizes = {f"shape{i}": len(_compact(r)) for i, r in enumerate(requests)}
    return store, Backlog(spec, trace_ids, run_ids, trace_runs, sizes)


def expected_span_ids(backlog: Backlog) -> set[tuple[bytes, bytes]]:
    """The ``(trace_id, span_id)`` pairs the exporter must deliver: LLM spans and run spans."""
    expected: set[tuple[bytes, bytes]] = set()
    trace_of_run = {r: trace_id_for_run(r).to_bytes(16, "big") for r in backlog.run_ids}
    for trace_id, run_id in zip(backlog.trace_ids, backlog.trace_runs, strict=True):
        expected.add((trace_of_run[run_id], span_id_for(trace_id).to_bytes(8, "big")))
    for run_id in backlog.run_ids:
        expected.add((trace_of_run[run_id], run_span_id_for(run_id).to_bytes(8, "big")))
    return expected
