"""The small value types of the source: what to discover, and what discovery yields."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

from ..models import Run, Step

__all__ = ["DiscoveredStep", "StepFilter", "in_shard"]


@dataclass(frozen=True, slots=True)
class StepFilter:
    """Which steps to discover.

    Args:
        since: only steps created after this time (strictly). In runs discovery (steps carry no
            timestamps there) it applies to the run's ``created_at``.
        until: only steps created before this time (strictly); in runs discovery, runs.
        agent_ids: only these agents (empty: all).
        model: only steps of this model (``Step.model``).
        project_id: only steps of this project.
    """

    since: datetime | None = None
    until: datetime | None = None
    agent_ids: tuple[str, ...] = ()
    model: str | None = None
    project_id: str | None = None


@dataclass(frozen=True, slots=True)
class DiscoveredStep:
    """A step found by discovery, with where to resume after it.

    Args:
        step: the step as the list endpoint returned it.
        position: an opaque token; ``discover(filt, resume=position)`` continues right after
            this step. Store it as is (it is a short ASCII string).
        run: the step's run when discovery listed it anyway (runs discovery), so the caller
            need not ask for it again; ``None`` otherwise.
    """

    step: Step
    position: str
    run: Run | None = None


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether this replica owns the record: a stable hash of the id modulo the replica count."""
    if shard is None:
        return True
    index, count = shard
    return zlib.crc32(record_id.encode()) % count == index
