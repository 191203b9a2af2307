"""The model's bookkeeping, which no real part has: what is known of every message (the
ledger) and exact whole-population counts, series and latency histograms."""

from __future__ import annotations

from array import array

from sim.engine import LogHistogram

__all__ = ["ERROR", "OK", "Counts", "Ledger"]

OK, ERROR = 1, 2  # message status in the ledger (0: never acked)


class Ledger:
    """What is known of every message, in flat arrays (a few bytes each) rather than objects."""

    def __init__(self) -> None:
        self.sender = array("i")
        self.conv = array("i")
        self.intended = array("d")
        self.expected = array("H")
        self.got = array("H")  # first receipts by expected recipients
        self.status = bytearray()  # 0 never acked, OK, ERROR
        self.pushed = bytearray()  # 1 once a node emitted it to a recipient other than the sender

    def new(self, sender: int, conv: int, intended: float, expected: int) -> int:
        self.sender.append(sender)
        self.conv.append(conv)
        self.intended.append(intended)
        self.expected.append(expected)
        self.got.append(0)
        self.status.append(0)
        self.pushed.append(0)
        return len(self.status) - 1

    def __len__(self) -> int:
        return len(self.status)


class Counts:
    """Exact whole-population counts and series, and population latency histograms."""

    SERIES = ("sends", "acked_ok", "acked_error", "deliveries_push", "deliveries_sync")

    def __init__(self, base: float) -> None:
        self.base = base  # simulated time of the series' second 0
        self.c: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.series: dict[str, list[int]] = {k: [] for k in self.SERIES}
        self.push_latency = LogHistogram()
        self.sync_latency = LogHistogram()
        self.ack_latency = LogHistogram()

    def inc(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n

    def at(self, name: str, t: float) -> None:
        s = self.series[name]
        i = int(t - self.base) if t > self.base else 0
        if i >= len(s):
            s.extend([0] * (i + 1 - len(s)))
        s[i] += 1
