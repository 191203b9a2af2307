"""Listening ports come from outside the kernel's ephemeral range, so an outgoing
connection can never take one between choosing it and the service binding it."""

from __future__ import annotations

import socket
from pathlib import Path

from imlab.services import ephemeral_range, free_port, listening_ranges


def test_ranges_leave_out_the_ephemeral_ports() -> None:
    assert listening_ranges((32768, 60999)) == [(10000, 32767), (61000, 65000)]
    assert listening_ranges((1024, 65535)) == []
    assert listening_ranges((15000, 65535)) == [(10000, 14999)]


def test_the_range_is_read_from_the_kernel_or_defaults(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t50000\n")
    assert ephemeral_range(f) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
    f.write_text("garbage")
    assert ephemeral_range(f) == (32768, 60999)


def test_free_ports_are_distinct_bindable_and_not_ephemeral() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if listening_ranges((low, high)):
        assert not any(low <= p <= high for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
