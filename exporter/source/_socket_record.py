"""One socket record (Letta's protocol v1 to v3) -> the ProviderTrace the API gives for it.

The record is what ``provider_trace_backends/socket.py`` builds from the ProviderTrace it also
writes to the database, so every field maps back:

=====================  ==========================================================================
record                 ProviderTrace
=====================  ==========================================================================
provider_trace_id      ``id`` (the same id the API and the database use: the same span id)
type                   ``call_type``
tags                   ``agent_tags``
request                ``request_json``
response               ``response_json``; a failed call has ``response: null`` with ``error``
                       and ``error_type``, and becomes ``{"error": ..., "error_type": ...}``, the
                       shape the API and the database store for it
timestamp              ``created_at``: when the record was sent, observed 2 to 9 ms after the
                       row's ``created_at`` (the record has no ``created_at`` of its own)
agent_id, run_id, step_id, source, org_id, user_id, compaction_settings, llm_config: as they are
=====================  ==========================================================================

The API's ``updated_at``, ``created_by_id``, ``last_updated_by_id`` and ``billing_context`` are
not in the record. Fields of a newer protocol version are ignored (the caller warns once).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..models import PROVIDER_TRACE_ID_PATTERN, ProviderTrace, UTCDateTime

__all__ = ["PROTOCOL_VERSION", "RecordError", "SocketRecord", "parse_socket_record"]

#: The newest protocol version this reader knows (Letta 0.16.8 sends 3).
PROTOCOL_VERSION: Final = 3


class SocketRecord(BaseModel):
    """A record as Letta's socket backend sends it (unknown fields of newer versions ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    protocol_version: int | None = None
    provider_trace_id: Annotated[str, Field(pattern=PROVIDER_TRACE_ID_PATTERN)]
    agent_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    tags: list[str] | None = None
    type: str | None = None
    source: str | None = None
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    timestamp: UTCDateTime | None = None
    org_id: str | None = None
    user_id: str | None = None
    compaction_settings: dict[str, Any] | None = None
    llm_config: dict[str, Any] | None = None


_ADAPTER: Final[TypeAdapter[SocketRecord]] = TypeAdapter(SocketRecord)


class RecordError(ValueError):
    """A line that is not a socket record: the reason word, one line of detail, the id if any."""

    def __init__(self, reason: str, detail: str, record_id: str | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.record_id = record_id


def parse_socket_record(line: bytes) -> tuple[ProviderTrace, int | None]:
    """The ProviderTrace of one record, and the record's protocol version.

    Raises:
        RecordError: the line is not JSON, not an object, or a field has the wrong type.
    """
    try:
        record = _ADAPTER.validate_json(line)
    except ValidationError as exc:
        raise _error(line, exc) from exc
    response = record.response
    if response is None:
        response = (
            {"error": record.error, "error_type": record.error_type}
            if record.error is not None or record.error_type is not None
            else {}
        )
    # The values were validated by SocketRecord with the types ProviderTrace declares.
    trace = ProviderTrace.model_construct(
        id=record.provider_trace_id,
        request_json=record.request if record.request is not None else {},
        response_json=response,
        step_id=record.step_id,
        agent_id=record.agent_id,
        agent_tags=record.tags,
        call_type=record.type,
        run_id=record.run_id,
        source=record.source,
        org_id=record.org_id,
        user_id=record.user_id,
        compaction_settings=record.compaction_settings,
        llm_config=record.llm_config,
        created_at=record.timestamp,
    )
    return trace, record.protocol_version


def _error(line: bytes, exc: ValidationError) -> RecordError:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first.get("type") == "json_invalid":
        return RecordError("invalid", f"not valid JSON ({first['msg']})", None)
    if first.get("type") == "model_type":
        return RecordError("invalid", "not a JSON object", None)
    field = ".".join(str(p) for p in first.get("loc", ()) if isinstance(p, str | int))
    field = field.split(".function-after")[0]
    return RecordError("invalid", f"field {field!r}: {first['msg']}", _record_id(line))


def _record_id(line: bytes) -> str | None:
    try:
        value = _ID_ADAPTER.validate_json(line).get("provider_trace_id")
    except ValidationError:
        return None
    return value if isinstance(value, str) else None


_ID_ADAPTER: Final[TypeAdapter[dict[str, Any]]] = TypeAdapter(dict[str, Any])
