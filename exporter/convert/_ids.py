"""Trace and span ids derived from Letta record ids, so exporting twice yields the same spans.

* A run's trace id is the 128 bits of its UUID (``run-<uuid>``), so a user can paste a run id
  into Jaeger or Tempo. Run ids that are not UUIDs are hashed to 128 bits.
* Span ids are hashes of record ids. The id space is split by the top bit: LLM spans (and any
  record) get ids with the top bit clear, run spans ids with the top bit set, so a run span can
  never share its id with an LLM span of the same trace.
* Neither is ever 0 (the W3C "invalid" id).
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from typing import Final

__all__ = [
    "parse_trace_id_hex",
    "run_span_id_for",
    "span_id_for",
    "trace_id_for_record",
    "trace_id_for_run",
]

_RUN_PREFIX: Final = "run-"
_SPAN_ID_MASK: Final = (1 << 63) - 1
_RUN_SPAN_BIT: Final = 1 << 63
_TRACE_ID_BYTES: Final = 16
_SPAN_ID_BYTES: Final = 8
_HEX32: Final = re.compile(r"[0-9a-fA-F]{32}")


def _digest(domain: str, value: str, size: int) -> int:
    # Domain separation keeps e.g. a record's trace id and span id independent.
    data = f"letta-otel-exporter/{domain}\x00{value}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=size).digest(), "big")


@functools.lru_cache(maxsize=4096)  # the spans of a run ask in turn; pure, so cacheable
def trace_id_for_run(run_id: str) -> int:
    """The trace id of a Letta run: the 128 bits of its UUID.

    Args:
        run_id: ``run-<uuid>`` (the prefix is optional); anything else is hashed.

    Returns:
        A 128-bit trace id, never 0.
    """
    text = run_id.removeprefix(_RUN_PREFIX)
    try:
        value = uuid.UUID(text).int
    except ValueError:
        value = 0
    return value or (_digest("trace/run", run_id, _TRACE_ID_BYTES) or 1)


def trace_id_for_record(record_id: str) -> int:
    """The trace id of a record that belongs to no run (hashed; never 0)."""
    return _digest("trace/record", record_id, _TRACE_ID_BYTES) or 1


def span_id_for(record_id: str) -> int:
    """The span id of a record (a provider trace): 63 hashed bits, top bit clear, never 0.

    Args:
        record_id: the record's id, e.g. ``provider_trace-<uuid>``.

    Returns:
        A 64-bit span id in ``[1, 2**63)``.
    """
    return (_digest("span", record_id, _SPAN_ID_BYTES) & _SPAN_ID_MASK) or 1


@functools.lru_cache(maxsize=4096)
def run_span_id_for(run_id: str) -> int:
    """The span id of a run's ``invoke_agent`` span: top bit set, so never an LLM span's id."""
    return _RUN_SPAN_BIT | _digest("span/run", run_id, _SPAN_ID_BYTES)


def parse_trace_id_hex(value: str | None) -> int | None:
    """A W3C trace id from 32 hex digits (Letta's own ``Step.trace_id``), or ``None``."""
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        return None
    return int(value, 16) or None
