"""Typed records at the Letta edge: ProviderTrace, Step, StepMetrics, Run, Agent.

The models follow the Letta API schema (``ProviderTrace`` exactly as its JSON schema and the Cloud
API page define it; ``Step``, ``StepMetrics`` and ``Run`` as a real 0.16.8 server sends them) but
are tolerant where real servers differ:

* unknown fields from newer servers are kept (``model_extra``), not rejected, so the converter can
  still put them on the span;
* naive datetimes (``Run.completed_at`` on 0.16.8) are read as UTC;
* every field but the ids is optional, because self-hosted servers leave many of them out.

A field of the wrong type is still an error: :func:`parse_record` turns pydantic's
``ValidationError`` into :class:`~exporter.errors.RecordInvalidError` naming the record's id and
the offending field. Records are parsed straight from the bytes received
(``validate_json``), never through an intermediate ``dict``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import RecordInvalidError

__all__ = [
    "Agent",
    "BillingContext",
    "ProviderTrace",
    "Run",
    "RunMetrics",
    "Step",
    "StepMetrics",
    "load_json",
    "parse_record",
    "parse_records",
    "parse_trace_body",
]

PROVIDER_TRACE_ID_PATTERN: Final = r"^provider_trace-[a-fA-F0-9]{8}"
TERMINAL_RUN_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
#: What a record whose JSON nests deeper than the parsers go is told (pydantic-core stops at a
#: couple of hundred levels, ``json`` at the interpreter's recursion limit).
NESTED_TOO_DEEPLY: Final = "nested too deeply"


def _as_utc(value: datetime) -> datetime:
    # Letta writes some timestamps without a zone (Run.completed_at on 0.16.8); they are UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]

_TOLERANT = ConfigDict(extra="allow", frozen=True)


class BillingContext(BaseModel):
    """Billing context of an LLM request (Letta Cloud; always null on self-hosted 0.16.8)."""

    model_config = _TOLERANT

    cost_source: str | None = None
    customer_id: str | None = None
    plan_type: str | None = None


class ProviderTrace(BaseModel):
    """One LLM provider call as Letta recorded it: the raw request and response plus context."""

    model_config = _TOLERANT

    id: Annotated[str, Field(pattern=PROVIDER_TRACE_ID_PATTERN)] | None = None
    request_json: dict[str, Any]
    response_json: dict[str, Any]
    step_id: str | None = None
    agent_id: str | None = None
    agent_tags: list[str] | None = None
    call_type: str | None = None
    run_id: str | None = None
    source: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    compaction_settings: dict[str, Any] | None = None
    llm_config: dict[str, Any] | None = None
    billing_context: BillingContext | None = None
    latency_ms: int | None = None
    created_at: UTCDateTime | None = None
    updated_at: UTCDateTime | None = None
    created_by_id: str | None = None
    last_updated_by_id: str | None = None


class Step(BaseModel):
    """An agent step. It carries no timestamps on 0.16.8: timing lives in StepMetrics."""

    model_config = _TOLERANT

    id: str
    origin: str | None = None
    organization_id: str | None = None
    provider_id: str | None = None
    run_id: str | None = None
    agent_id: str | None = None
    provider_name: str | None = None
    provider_category: str | None = None
    model: str | None = None
    model_handle: str | None = None
    model_endpoint: str | None = None
    context_window_limit: int | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    completion_tokens_details: dict[str, Any] | None = None
    prompt_tokens_details: dict[str, Any] | None = None
    stop_reason: str | None = None
    status: str | None = None
    error_type: str | None = None
    error_data: dict[str, Any] | None = None
    tags: list[str] | None = None
    tid: str | None = None
    trace_id: str | None = None
    request_id: str | None = None
    feedback: str | None = None
    project_id: str | None = None
    messages: list[Any] | None = None
    created_at: UTCDateTime | None = None


class StepMetrics(BaseModel):
    """Durations of a step, in nanoseconds; absolute starts are null on self-hosted 0.16.8."""

    model_config = _TOLERANT

    id: str
    organization_id: str | None = None
    provider_id: str | None = None
    run_id: str | None = None
    agent_id: str | None = None
    project_id: str | None = None
    template_id: str | None = None
    base_template_id: str | None = None
    step_start_ns: int | None = None
    llm_request_start_ns: int | None = None
    llm_request_ns: int | None = None
    tool_execution_ns: int | None = None
    step_ns: int | None = None


class Run(BaseModel):
    """One agent invocation; its status tells whether more steps can still appear."""

    model_config = _TOLERANT

    id: str
    status: str | None = None
    agent_id: str | None = None
    created_at: UTCDateTime | None = None
    completed_at: UTCDateTime | None = None
    conversation_id: str | None = None
    base_template_id: str | None = None
    background: bool | None = None
    metadata: dict[str, Any] | None = None
    request_config: dict[str, Any] | None = None
    stop_reason: str | None = None
    ttft_ns: int | None = None
    total_duration_ns: int | None = None

    @property
    def is_finished(self) -> bool:
        """Whether the run can get no more steps."""
        return self.status in TERMINAL_RUN_STATUSES


class RunMetrics(BaseModel):
    """Run timing: ``run_start_ns`` is absolute (epoch ns), ``run_ns`` a duration."""

    model_config = _TOLERANT

    id: str
    organization_id: str | None = None
    agent_id: str | None = None
    project_id: str | None = None
    run_start_ns: int | None = None
    run_ns: int | None = None
    num_steps: int | None = None
    tools_used: list[str] | None = None
    template_id: str | None = None
    base_template_id: str | None = None


class Agent(BaseModel):
    """The few parts of Letta's AgentState the exporter uses (the rest is kept as extra)."""

    model_config = _TOLERANT

    id: str
    name: str | None = None
    tags: list[str] | None = None
    agent_type: str | None = None
    project_id: str | None = None


M = TypeVar("M", bound=BaseModel)


@cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def load_json(raw: bytes | str) -> Any:
    """``json.loads`` for the error paths, where input of any depth must give a ``ValueError``.

    ``json`` recurses once per nesting level: a record of 1000 nested arrays would otherwise
    end the process with a ``RecursionError`` instead of being reported as a bad record.

    Raises:
        ValueError: not JSON (a ``JSONDecodeError``, or ``UnicodeDecodeError`` for bytes that
            are not UTF-8), or nested too deeply (the message says so).
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(NESTED_TOO_DEEPLY) from None


def _record_id(raw: bytes | str, index: int | None) -> str | None:
    """Best-effort id of the record that failed, for the error message (error path only)."""
    try:
        data = load_json(raw)
    except ValueError:
        return None
    if index is not None:
        data = data[index] if isinstance(data, list) and index < len(data) else None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _translate(
    model: type[BaseModel], raw: bytes | str, exc: ValidationError, *, in_list: bool
) -> RecordInvalidError:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = list(first.get("loc", ()))
    index: int | None = None
    if in_list and loc and isinstance(loc[0], int):
        index = loc[0]
        loc = loc[1:]
    if first.get("type") == "json_invalid":
        return RecordInvalidError(model.__name__, None, None, _json_invalid(first["msg"]))
    # Union members (``X | None``) add their type name to the location; keep only field names.
    field = ".".join(str(p) for p in loc if not _is_type_tag(p)) or None
    return RecordInvalidError(model.__name__, _record_id(raw, index), field, first["msg"])


def _json_invalid(message: str) -> str:
    if "recursion limit" in message:
        return f"{NESTED_TOO_DEEPLY} (more levels of arrays and objects than are read)"
    return f"not valid JSON ({message})"


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"function-after[_as_utc(), datetime]", "constrained-str", "none"}
        or part.startswith(("function-", "list[", "dict["))
    )


def parse_record(model: type[M], raw: bytes | str) -> M:
    """Parse one record from the bytes received.

    Raises:
        RecordInvalidError: the body is not valid JSON or a field has the wrong type; the message
            names the record id (when readable) and the field.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _translate(model, raw, exc, in_list=False) from exc


def parse_records(model: type[M], raw: bytes | str) -> list[M]:
    """Parse a JSON array of records (a list endpoint's page) from the bytes received.

    Raises:
        RecordInvalidError: as :func:`parse_record`, naming the first failing item.
    """
    try:
        return list(_adapter(list[model]).validate_json(raw))  # type: ignore[valid-type]
    except ValidationError as exc:
        raise _translate(model, raw, exc, in_list=True) from exc


def parse_trace_body(raw: bytes | str) -> ProviderTrace | None:
    """Parse a ``GET /v1/steps/{id}/trace`` body; ``null`` means "no trace (yet)".

    Raises:
        RecordInvalidError: the body is neither ``null`` nor a valid ProviderTrace.
    """
    try:
        return _adapter(ProviderTrace | None).validate_json(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise _translate(ProviderTrace, raw, exc, in_list=False) from exc
