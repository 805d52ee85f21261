"""Reading Letta: the source contract, the API source (client, discovery, enrichment) and the
file source.

``LettaClient`` talks to a Letta server (pooled httpx, bounded concurrency, one retry layer);
``read_trace_file`` reads ProviderTraces saved as JSON or JSON lines. Both raise only
:class:`~exporter.errors.SourceError` subclasses and
:class:`~exporter.errors.RecordInvalidError`.
"""

from __future__ import annotations

from ._api import ApiSource
from ._client import USER_AGENT, LettaClient
from ._contract import Awaiting, CaughtUp, Event, Found, Missing, Skipped, Source, Unreadable
from ._enrich import EnrichingSource, StepEnricher
from ._file import FileSource, TraceFileReader, TraceRecord, read_trace_file
from ._retry import RetryPolicy, SourceStats
from ._runs import RunLookup
from ._socket import SocketCheck, SocketSource, SocketStats
from ._socket_listener import ListenerOptions, SocketListener
from ._types import DiscoveredStep, StepFilter, in_shard

__all__ = [
    "USER_AGENT",
    "ApiSource",
    "Awaiting",
    "CaughtUp",
    "DiscoveredStep",
    "EnrichingSource",
    "Event",
    "FileSource",
    "Found",
    "LettaClient",
    "ListenerOptions",
    "Missing",
    "RetryPolicy",
    "RunLookup",
    "Skipped",
    "SocketCheck",
    "SocketListener",
    "SocketSource",
    "SocketStats",
    "Source",
    "SourceStats",
    "StepEnricher",
    "StepFilter",
    "TraceFileReader",
    "TraceRecord",
    "Unreadable",
    "in_shard",
    "read_trace_file",
]
