"""Test doubles on real sockets: an OTLP receiver and a fake Letta.

They live beside the exporter, not in it: ``pip install .`` does not install them; the tests, the
benchmarks and a checkout's demos import them from the repository root, and
``python -m testkit fake-letta`` / ``python -m testkit otlp-receiver`` run them on their own.
"""

from __future__ import annotations

from .fake_letta import DEEP_LEVELS, BrokenTrace, FakeLetta, Fault, LettaStore, RecordedRequest
from .otlp_receiver import (
    OtlpReceiver,
    ReceivedExemplar,
    ReceivedPoint,
    ReceivedRequest,
    ReceivedSpan,
)

__all__ = [
    "DEEP_LEVELS",
    "BrokenTrace",
    "FakeLetta",
    "Fault",
    "LettaStore",
    "OtlpReceiver",
    "ReceivedExemplar",
    "ReceivedPoint",
    "ReceivedRequest",
    "ReceivedSpan",
    "RecordedRequest",
]
