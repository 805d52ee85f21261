"""Rebuild ``provider-traces.jsonl`` from the recorded fixtures in tests/fixtures/letta-0.16.8/.

Each agent step becomes one line ``{"step": ..., "trace": ..., "metrics": ..., "agent": ...}``
exactly as recorded (the step and its metrics give the spans their durations and token counts),
in the order the calls were made; the three summarization traces read from the server's database
follow as plain ProviderTraces (the API has no step for them). The recording kept no Agent
records for the three agents, so the sample names them after what they run (``"agent"`` holds
the id and that name): the name is the sample's, the rest is the server's.

    python examples/build_sample.py    # writes examples/provider-traces.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "letta-0.16.8"
OUT = ROOT / "examples" / "provider-traces.jsonl"

#: Names for the sample's agents (by what each one runs in the recording).
AGENT_NAMES = {
    "agent-d027b87e-6c15-4e07-a892-d15d95d77843": "openai-helper",
    "agent-57a10299-33e0-47b6-a1c2-b8bb5162f436": "memgpt-v2-helper",
    "agent-6e64c41a-120e-44ea-83ed-509134b8c727": "claude-helper",
}


def main() -> None:
    steps: list[dict[str, Any]] = []
    for path in sorted((FIXTURES / "steps").glob("step-*.json")):
        record = json.loads(path.read_text())
        if record["trace"] is None:
            continue  # Letta wrote no trace for this step: nothing to show
        agent_id = record["step"]["agent_id"]
        record["agent"] = {"id": agent_id, "name": AGENT_NAMES[agent_id]}
        steps.append(record)
    steps.sort(key=lambda r: r["trace"]["created_at"])
    database = json.loads(
        (FIXTURES / "traces" / "summarization_traces_from_database.json").read_text()
    )
    lines = [json.dumps(r, separators=(",", ":")) for r in steps]
    lines += [json.dumps(row, separators=(",", ":")) for row in database["rows"]]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(lines)} records ({len(steps)} steps with their trace, metrics and agent)")


if __name__ == "__main__":
    main()
