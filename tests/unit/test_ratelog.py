"""`LimitedLog` writes at most `burst` lines of a kind per window, then says how many it
left out."""

from __future__ import annotations

import logging

import pytest

from imlab.ratelog import LimitedLog


def test_lines_past_the_burst_are_counted_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = LimitedLog(logging.getLogger("t"), burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        written = [limited.warning("bad packet", "n=%d", i) for i in range(1000)]
        assert written.count(True) == 3
        assert limited.warning("other kind", "own budget")
        now[0] = 11.0
        assert limited.warning("bad packet", "again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["bad packet: n=0", "bad packet: n=1", "bad packet: n=2"]
    assert "bad packet: 997 more like this" in lines[4]
    assert lines[5] == "bad packet: again"
    assert len(lines) == 6
