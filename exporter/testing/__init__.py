"""Test doubles shipped with the package, on real sockets: an OTLP receiver and a fake Letta."""

from __future__ import annotations

from .fake_letta import FakeLetta, Fault, LettaStore, RecordedRequest
from .otlp_receiver import OtlpReceiver, ReceivedRequest, ReceivedSpan

__all__ = [
    "FakeLetta",
    "Fault",
    "LettaStore",
    "OtlpReceiver",
    "ReceivedRequest",
    "ReceivedSpan",
    "RecordedRequest",
]
