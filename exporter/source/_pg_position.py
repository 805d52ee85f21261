"""Where the PostgreSQL source resumes: a keyset position plus the recently read ids.

``created_at`` is set when Letta inserts a row, but the row becomes visible only when its
transaction commits: a row can appear *behind* a keyset cursor that has already passed its
``created_at``. The source therefore re-reads an overlap window (rows newer than the database's
``now() - overlap``) on every page and skips the ids it already yielded there. Those ids travel
in the position, so a restart neither loses a late row nor repeats the window. They are bounded
twice: only ids inside the overlap window are kept (a backfill of old rows keeps none), and at
most :data:`MAX_RECENT` of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

__all__ = ["MAX_RECENT", "Cursor"]

#: Ids kept for the overlap window's dedup; past it the oldest go (a late row may repeat).
MAX_RECENT: Final = 2_000
_EPOCH: Final = datetime(1, 1, 1, tzinfo=UTC)


def _json_str(text: str) -> str:
    """``json.dumps(text)``, without the call for the ids Letta makes (printable ASCII)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


@dataclass(slots=True)
class Cursor:
    """The last ``(created_at, id)`` yielded and the ids yielded inside the overlap window."""

    created_at: datetime = _EPOCH
    id: str = ""
    recent: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def decode(cls, position: str | None) -> Cursor:
        """The cursor a position string stands for (``None``: from the beginning).

        Raises:
            ValueError: the string is not a position of this source.
        """
        if not position:
            return cls()
        data = json.loads(position)
        if not isinstance(data, dict) or "t" not in data or "i" not in data:
            raise ValueError("not a postgres source position")
        recent = {str(i): datetime.fromisoformat(t) for t, i in data.get("r", ())}
        return cls(datetime.fromisoformat(data["t"]), str(data["i"]), recent)

    def encode(self) -> str:
        """The position string (short: the recent ids are only those of the overlap window)."""
        if not self.recent:  # the common case, on the hot path: one string per trace
            return f'{{"t":"{self.created_at.isoformat()}","i":{_json_str(self.id)}}}'
        data: dict[str, object] = {"t": self.created_at.isoformat(), "i": self.id}
        if self.recent:
            data["r"] = [[t.isoformat(), i] for i, t in self.recent.items()]
        return json.dumps(data, separators=(",", ":"))

    def advance(self, created_at: datetime, record_id: str, horizon: datetime) -> None:
        """Record that the row ``(created_at, record_id)`` was yielded."""
        if (created_at, record_id) > (self.created_at, self.id):
            self.created_at, self.id = created_at, record_id
        if created_at >= horizon:
            self.recent[record_id] = created_at
            if len(self.recent) > MAX_RECENT:
                del self.recent[next(iter(self.recent))]

    def prune(self, horizon: datetime) -> None:
        """Forget the ids that fell out of the overlap window."""
        if self.recent:
            self.recent = {i: t for i, t in self.recent.items() if t >= horizon}

    def lower_bound(self, horizon: datetime) -> tuple[datetime, str]:
        """Where the next key page starts: the cursor, or the overlap window if that is older."""
        if self.created_at >= horizon:
            return horizon, ""
        return self.created_at, self.id
