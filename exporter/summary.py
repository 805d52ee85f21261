"""What a pass (or a whole one-shot export) did: the counts every part adds to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MAX_NAMED_FAILURES", "ExportSummary"]

MAX_NAMED_FAILURES: Final = 100


@dataclass(slots=True)
class ExportSummary:
    """What a pass (or a whole one-shot export) did; printed by the CLI."""

    discovered: int = 0
    exported: int = 0
    run_spans: int = 0
    missing: int = 0
    pending: int = 0
    invalid: int = 0
    rejected: int = 0
    undelivered: int = 0
    skipped_shard: int = 0
    #: The first failures, by name (the dead-letter file has them all; memory stays bounded).
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        """Name a failure in the summary (the first ``MAX_NAMED_FAILURES`` are kept)."""
        if len(self.failures) < MAX_NAMED_FAILURES:
            self.failures.append(text)

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.rejected or self.undelivered)

    def add(self, other: ExportSummary) -> None:
        for name in (
            "discovered",
            "exported",
            "run_spans",
            "missing",
            "invalid",
            "rejected",
            "undelivered",
            "skipped_shard",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.pending = other.pending
        for text in other.failures:
            self.fail(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "discovered": self.discovered,
            "exported": self.exported,
            "run_spans": self.run_spans,
            "missing_traces": self.missing,
            "pending_traces": self.pending,
            "invalid": self.invalid,
            "rejected": self.rejected,
            "undelivered": self.undelivered,
            "skipped_other_shards": self.skipped_shard,
            "failures": self.failures,
            "ok": self.ok,
        }
