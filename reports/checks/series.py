"""Series: what happened second by second (sends, acks, deliveries, losses, connections,
push latency), and the rates and counts over the whole run."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from reports.checks.base import Check, Result, figures, ratio
from reports.checks.index import LOST, Clock, Index, fate, missing
from reports.stats import FloatArray, IntArray, bucket_percentile


def _series(
    clock: Clock,
    counts: dict[str, tuple[Iterable[float], Iterable[float] | None]],
    push_t: FloatArray,
    push_ms: FloatArray,
) -> dict[str, Any]:
    """Per-second series relative to t0; `counts` maps a name to (times, weights or None).

    The buckets run from the earliest time any series holds (or t0) to the latest
    (or the judging end), so every point lands in a bucket.
    """
    arrays: dict[str, tuple[FloatArray, FloatArray | None]] = {}
    lo_t, hi_t = clock.t0, clock.last
    for name, (times, weights) in counts.items():
        arr = (
            np.asarray(times, dtype=np.float64)
            if isinstance(times, np.ndarray | list)
            else np.fromiter(times, dtype=np.float64)
        )
        w = None if weights is None else np.fromiter(weights, dtype=np.float64)
        arrays[name] = (arr, w)
        if arr.size:
            lo_t = min(lo_t, float(arr.min()))
            hi_t = max(hi_t, float(arr.max()))
    lo = math.floor(lo_t - clock.t0)
    hi = math.floor(hi_t - clock.t0)
    n = hi - lo + 1
    out: dict[str, Any] = {"t0": clock.t0, "t": list(range(lo, hi + 1))}
    for name, (arr, w) in arrays.items():
        idx = np.floor(arr - clock.t0).astype(np.int64) - lo
        out[name] = np.bincount(idx, weights=w, minlength=n).astype(np.int64).tolist()
    buckets: IntArray = np.floor(push_t - clock.t0).astype(np.int64) - lo
    out["latency_p50_ms"] = bucket_percentile(push_ms, buckets, n, 500)
    out["latency_p99_ms"] = bucket_percentile(push_ms, buckets, n, 990)
    return out


def series(index: Index) -> Result:
    clock, tally, d = index.clock, index.tally, index.deliveries
    ms = index.msgs.values()
    lost = [m for m in ms if fate(m, clock.end) == LOST]
    push_t = np.asarray(d.push_t, dtype=np.float64)
    push_ms = np.asarray(d.push_lat, dtype=np.float64) * 1000.0
    counts: dict[str, tuple[Iterable[float], Iterable[float] | None]] = {
        "sends": ((m.t for m in ms), None),
        "acked_ok": ((m.ok_t for m in ms if m.ok_t is not None), None),
        "acked_error": (
            (m.first_ack_t for m in ms if m.ok_t is None and m.first_ack_t is not None),
            None,
        ),
        "deliveries_push": (push_t, None),
        "deliveries_sync": (d.sync_t, None),
        "lost": ([m.intended for m in lost], [missing(m) for m in lost]),
        "connects": (tally.connects, None),
        "disconnects": (tally.disconnects, None),
        "syncs": (tally.syncs, None),
    }
    window = max(clock.stop - clock.t0, 0.0)
    acked_ok = sum(1 for m in ms if m.ok_t is not None)
    throughput = {
        "window_s": round(window, 3),
        "accepted_sends_per_s": ratio(acked_ok, window),
        "deliveries_per_s": ratio(d.push_ok + d.sync_ok, window),
    }
    connections = {
        "connects": len(tally.connects),
        "connect_failed": tally.connect_failed,
        "disconnects": len(tally.disconnects),
        "syncs": len(tally.syncs),
    }
    return figures(
        {
            "throughput": throughput,
            "connections": connections,
            "series": _series(clock, counts, push_t, push_ms),
        }
    )


SERIES = Check("series", ("throughput", "connections", "series"), (), series)
