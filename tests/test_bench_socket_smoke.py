"""A small run of the socket benchmark, so it cannot rot: every record arrives once, figures exist.

No timing is asserted: the benchmark reports speed, the suite only checks that it works.
"""

from __future__ import annotations

import pytest

from bench import socket as bench_socket

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_small_socket_run_delivers_every_record_once() -> None:
    result = bench_socket.run_case(bench_socket.Case(rate=400, records=300, size="2kb"))
    assert result.sent == 300
    assert result.received == 300
    assert result.delivered == 300
    assert result.unique_at_receiver == 300
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.refused == 0
    assert result.invalid == 0
    assert result.p50_ms > 0
    assert result.p99_ms >= result.p50_ms
    assert result.cpu_us_per_record > 0
    assert result.peak_rss_mb > 0
    assert "sustained" in bench_socket.describe(result)
