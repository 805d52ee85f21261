"""Database rows -> the same records the API would have answered.

The API builds its answers from these very rows, so the mapping is mostly renames
(``_created_by_id`` -> ``created_by_id``, ``metadata_`` -> ``metadata``, the step status enum
``SUCCESS`` -> ``success``) plus what the API hides (the step's ``created_at``). Rows come from
typed columns of Letta's own tables, so the models are built with ``model_construct`` (no
validation pass: ~10x cheaper on the hot path); the json columns, which the database does not
type, are parsed here and checked to have the shape the model declares. A body that is not a
JSON object makes the row :class:`UnreadableRow`, reported by the source and passed over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

from pydantic import BaseModel
from pydantic_core import from_json

from ..models import Agent, ProviderTrace, Run, Step, StepMetrics
from ._pg_schema import AGENT_COLUMNS, METRICS_COLUMNS, RUN_COLUMNS, STEP_COLUMNS, TRACE_COLUMNS

__all__ = ["UnreadableRow", "agent_from_row", "row_ids", "run_from_row", "trace_from_row"]

_N_TRACE: Final = len(TRACE_COLUMNS)
_N_STEP: Final = len(STEP_COLUMNS)
_STEP_AT: Final = _N_TRACE
_METRICS_AT: Final = _N_TRACE + _N_STEP
_T: Final = {c: i for i, c in enumerate(TRACE_COLUMNS)}
_S: Final = {c: i for i, c in enumerate(STEP_COLUMNS)}
_M: Final = {c: i for i, c in enumerate(METRICS_COLUMNS)}
_R: Final = {c: i for i, c in enumerate(RUN_COLUMNS)}
_A: Final = {c: i for i, c in enumerate(AGENT_COLUMNS)}

# Model field <- column, where the API renames one.
_TRACE_RENAMES: Final = {
    "_created_by_id": "created_by_id",
    "_last_updated_by_id": "last_updated_by_id",
}
_TRACE_PLAIN: Final = tuple(
    (_TRACE_RENAMES.get(c, c), i)
    for c, i in _T.items()
    if c not in ("request_json", "response_json", "agent_tags", "compaction_settings", "llm_config")
    and c != "is_deleted"
)
_STEP_JSON: Final = {"completion_tokens_details", "prompt_tokens_details", "error_data", "tags"}
_STEP_PLAIN: Final = tuple(
    (c, i) for c, i in _S.items() if c not in _STEP_JSON and c != "is_deleted"
)
_METRICS_PLAIN: Final = tuple((c, i) for c, i in _M.items() if c != "is_deleted")


M = TypeVar("M", bound=BaseModel)
_DEFAULTS: Final[dict[type[BaseModel], dict[str, Any]]] = {
    model: {n: f.get_default(call_default_factory=True) for n, f in model.model_fields.items()}
    for model in (ProviderTrace, Step, StepMetrics)
}
_setattr: Final = object.__setattr__


def _construct(model: type[M], values: dict[str, Any]) -> M:
    """``model.model_construct(**values)`` for trusted values, at a quarter of its cost.

    The hot path builds three records per trace; ``model_construct`` spends most of its time
    checking each field for aliases and defaults, which rows of known columns do not need.
    """
    obj = model.__new__(model)
    _setattr(obj, "__dict__", {**_DEFAULTS[model], **values})
    _setattr(obj, "__pydantic_fields_set__", set(values))
    _setattr(obj, "__pydantic_extra__", {})
    _setattr(obj, "__pydantic_private__", None)
    return obj


class UnreadableRow(Exception):  # noqa: N818 - a signal between two modules, not an error users see
    """A row whose json columns do not have the shape the record declares."""

    def __init__(self, record_id: str | None, detail: str, raw: bytes | None) -> None:
        super().__init__(detail)
        self.record_id = record_id
        self.detail = detail
        self.raw = raw


def _json(text: str | None, column: str, kind: type, record_id: str | None) -> Any:
    """A json column's value, ``None`` for SQL NULL or JSON ``null``; else of type ``kind``."""
    if text is None:
        return None
    try:
        value = from_json(text)
    except ValueError as exc:
        raise UnreadableRow(record_id, f"{column}: not valid JSON ({exc})", text.encode()) from exc
    if value is None or isinstance(value, kind):
        return value
    raise UnreadableRow(
        record_id,
        f"{column}: expected a JSON {_KIND_NAMES[kind]}, got {type(value).__name__}",
        text.encode(),
    )


_KIND_NAMES: Final[Mapping[type, str]] = {dict: "object", list: "array"}


def _strings(value: Any, column: str, record_id: str | None, text: str | None) -> list[str] | None:
    if value is None:
        return None
    if all(isinstance(v, str) for v in value):
        return value  # type: ignore[no-any-return]
    raise UnreadableRow(record_id, f"{column}: expected an array of strings", (text or "").encode())


_RUN_ID: Final = _T["run_id"]
_AGENT_ID: Final = _T["agent_id"]
_STEP_RUN_ID: Final = _STEP_AT + _S["run_id"]
_STEP_AGENT_ID: Final = _STEP_AT + _S["agent_id"]


def row_ids(row: tuple[Any, ...]) -> tuple[str | None, str | None]:
    """The run and agent ids of a row of :attr:`Queries.rows`, its step's when it has none.

    The same ids :func:`trace_from_row`'s records give, read without parsing a body.
    """
    has_step = row[_STEP_AT] is not None
    return (
        row[_RUN_ID] or (row[_STEP_RUN_ID] if has_step else None),
        row[_AGENT_ID] or (row[_STEP_AGENT_ID] if has_step else None),
    )


def trace_from_row(
    row: tuple[Any, ...], *, bodies: bool = True
) -> tuple[ProviderTrace, Step | None, StepMetrics | None]:
    """The trace, its step and its metrics from one row of :attr:`Queries.rows`.

    Args:
        row: the row, in :data:`TRACE_COLUMNS` + ``s_`` step + ``m_`` metrics order.
        bodies: ``False`` for a ``provider_trace_metadata`` row (no bodies: both are ``{}``).

    Raises:
        UnreadableRow: a json column has the wrong shape (a body that is not a JSON object, ...).
    """
    record_id = row[0]
    fields: dict[str, Any] = {name: row[i] for name, i in _TRACE_PLAIN}
    if bodies:
        request = _json(row[_T["request_json"]], "request_json", dict, record_id)
        response = _json(row[_T["response_json"]], "response_json", dict, record_id)
        if request is None or response is None:
            which = "request_json" if request is None else "response_json"
            raise UnreadableRow(record_id, f"{which}: expected a JSON object, got null", None)
        fields["request_json"] = request
        fields["response_json"] = response
    else:
        fields["request_json"] = {}
        fields["response_json"] = {}
    tags_text = row[_T["agent_tags"]]
    fields["agent_tags"] = _strings(
        _json(tags_text, "agent_tags", list, record_id), "agent_tags", record_id, tags_text
    )
    fields["compaction_settings"] = _json(
        row[_T["compaction_settings"]], "compaction_settings", dict, record_id
    )
    fields["llm_config"] = _json(row[_T["llm_config"]], "llm_config", dict, record_id)
    fields["billing_context"] = None  # 0.16.8 never stores it; the API answers null
    trace = _construct(ProviderTrace, fields)

    step: Step | None = None
    if row[_STEP_AT] is not None:
        s = {name: row[_STEP_AT + i] for name, i in _STEP_PLAIN}
        s["completion_tokens_details"] = _json(
            row[_STEP_AT + _S["completion_tokens_details"]],
            "steps.completion_tokens_details",
            dict,
            record_id,
        )
        s["prompt_tokens_details"] = _json(
            row[_STEP_AT + _S["prompt_tokens_details"]],
            "steps.prompt_tokens_details",
            dict,
            record_id,
        )
        s["error_data"] = _json(
            row[_STEP_AT + _S["error_data"]], "steps.error_data", dict, record_id
        )
        step_tags = row[_STEP_AT + _S["tags"]]
        s["tags"] = _strings(
            _json(step_tags, "steps.tags", list, record_id), "steps.tags", record_id, step_tags
        )
        step = _construct(Step, s)

    metrics: StepMetrics | None = None
    if row[_METRICS_AT] is not None:
        metrics = _construct(
            StepMetrics, {name: row[_METRICS_AT + i] for name, i in _METRICS_PLAIN}
        )
    return trace, step, metrics


def run_from_row(row: tuple[Any, ...]) -> Run:
    """A run from one row of :attr:`Queries.runs` (validated: runs are few per page)."""
    data = {
        c: row[i] for c, i in _R.items() if c not in ("is_deleted", "metadata_", "request_config")
    }
    data["metadata"] = _json(row[_R["metadata_"]], "runs.metadata_", dict, row[0])
    data["request_config"] = _json(row[_R["request_config"]], "runs.request_config", dict, row[0])
    return Run.model_validate(data)


def agent_from_row(row: tuple[Any, ...]) -> Agent:
    """An agent from one row of :attr:`Queries.agents` (its tags last)."""
    data = {c: row[i] for c, i in _A.items() if c != "is_deleted"}
    tags = row[len(AGENT_COLUMNS)]
    data["tags"] = list(tags) if tags is not None else None
    return Agent.model_validate(data)
