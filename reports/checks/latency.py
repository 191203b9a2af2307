"""Latency: how long after its intended send time a message was acked and delivered.

Every figure is measured from the intended send time, so a client that falls behind
its schedule shows as latency rather than hiding it: `push` and `sync_recovery` per
first delivery by that path, `fanout` per message until its last push, `ack` per
first ack and `ack_ok` per ok ack.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from reports.checks.base import Check, Result, figures
from reports.checks.index import Index
from reports.stats import LatencyStats, latency_stats


def _ms(seconds: Iterable[float]) -> LatencyStats:
    return latency_stats(np.asarray(list(seconds), dtype=np.float64) * 1000.0)


def latency(index: Index) -> Result:
    msgs = index.msgs.values()
    d = index.deliveries
    stats: dict[str, LatencyStats] = {
        "push": _ms(d.push_lat),
        "fanout": _ms(
            m.last_push - m.intended for m in msgs if m.ok_t is not None and m.last_push is not None
        ),
        "sync_recovery": _ms(d.sync_lat),
        "ack": _ms(m.first_ack_t - m.intended for m in msgs if m.first_ack_t is not None),
        "ack_ok": _ms(m.ok_t - m.intended for m in msgs if m.ok_t is not None),
    }
    return figures({"latency_ms": stats})


LATENCY = Check("latency", ("latency_ms",), (), latency)
