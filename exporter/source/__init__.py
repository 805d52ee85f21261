"""Reading Letta: the async client, step discovery and the file source.

``LettaClient`` talks to a Letta server (pooled httpx, bounded concurrency, one retry layer);
``read_trace_file`` reads ProviderTraces saved as JSON or JSON lines. Both raise only
:class:`~exporter.errors.SourceError` subclasses and
:class:`~exporter.errors.RecordInvalidError`.
"""

from __future__ import annotations

from ._client import USER_AGENT, LettaClient
from ._file import TraceFileReader, TraceRecord, read_trace_file
from ._retry import RetryPolicy, SourceStats
from ._runs import RunLookup
from ._socket import SocketCheck, SocketSource, SocketStats
from ._socket_listener import ListenerOptions, SocketListener
from ._types import DiscoveredStep, StepFilter

__all__ = [
    "USER_AGENT",
    "DiscoveredStep",
    "LettaClient",
    "ListenerOptions",
    "RetryPolicy",
    "RunLookup",
    "SocketCheck",
    "SocketListener",
    "SocketSource",
    "SocketStats",
    "SourceStats",
    "StepFilter",
    "TraceFileReader",
    "TraceRecord",
    "read_trace_file",
]
