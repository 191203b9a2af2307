"""Small numeric kernels for the checker: nearest-rank percentiles and inversion counts.

Percentiles use the nearest-rank definition (the smallest sample with at least
p% of the samples at or below it), so every reported value is one that was
actually observed, and tiny examples have exact, hand-checkable answers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import numpy.typing as npt

# (key, per-mille) pairs; per-mille keeps the rank arithmetic in integers.
PERCENTILES: tuple[tuple[str, int], ...] = (
    ("p50", 500),
    ("p90", 900),
    ("p99", 990),
    ("p99_9", 999),
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class LatencyStats(TypedDict):
    """Summary of a latency sample in milliseconds; all None when the sample is empty."""

    count: int
    mean: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    p99_9: float | None
    max: float | None


def _ms(x: float) -> float:
    return round(float(x), 3)


def rank_index(count: int, permille: int) -> int:
    """Index into an ascending sample of `count` values of its nearest-rank percentile."""
    return max((permille * count + 999) // 1000 - 1, 0)


def latency_stats(values: Sequence[float] | FloatArray) -> LatencyStats:
    """count, mean, min, p50/p90/p99/p99.9 and max of a sample (milliseconds, rounded to µs)."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    n = int(arr.size)
    if n == 0:
        return LatencyStats(
            count=0, mean=None, min=None, p50=None, p90=None, p99=None, p99_9=None, max=None
        )
    p = {key: _ms(arr[rank_index(n, pm)]) for key, pm in PERCENTILES}
    return LatencyStats(
        count=n,
        mean=_ms(arr.mean()),
        min=_ms(arr[0]),
        p50=p["p50"],
        p90=p["p90"],
        p99=p["p99"],
        p99_9=p["p99_9"],
        max=_ms(arr[-1]),
    )


def bucket_percentile(
    values: FloatArray, buckets: IntArray, nbuckets: int, permille: int
) -> list[float | None]:
    """Nearest-rank percentile of `values` within each bucket 0..nbuckets-1 (None if empty)."""
    out: list[float | None] = [None] * nbuckets
    if values.size == 0:
        return out
    order = np.lexsort((values, buckets))
    sorted_vals = values[order]
    sorted_buckets = buckets[order]
    present, starts, counts = np.unique(sorted_buckets, return_index=True, return_counts=True)
    idx = starts + np.maximum((permille * counts + 999) // 1000 - 1, 0)
    for b, v in zip(present.tolist(), sorted_vals[idx].tolist(), strict=True):
        out[b] = _ms(v)
    return out


# Below _TINY elements a Python loop beats numpy's per-call overhead; below _SMALL
# the bisect insertion count beats the numpy merge sort on shuffled input.
_TINY = 128
_SMALL = 4096
# Widest inversion span handled by comparing shifted copies (one numpy pass per shift).
_BAND = 64


def count_inversions(values: Sequence[int] | IntArray) -> int:
    """Number of pairs i < j with values[i] > values[j] (equal values are not inverted).

    Three exact methods, picked by shape. Nearly sorted input (the common case:
    delivery jitter) has every inversion within a short span W, found from the
    prefix maximum, and is counted with W vectorised passes. Otherwise short
    input uses a bisect insertion count and long input a bottom-up merge sort
    vectorised with numpy, O(n log² n) with no Python loop per element.
    """
    n = len(values)
    if n < 2:
        return 0
    if n < _TINY:
        seq = values.tolist() if isinstance(values, np.ndarray) else list(values)
        return 0 if seq == sorted(seq) else _bisect_inversions(seq)
    arr = np.asarray(values, dtype=np.int64)
    # For an inversion (i, j), prefix_max[i] >= arr[i] > arr[j], so i is at or after
    # the first index whose prefix max exceeds arr[j]: that bounds j - i.
    first = np.searchsorted(np.maximum.accumulate(arr), arr, side="right")
    span = int((np.arange(n) - first).max())
    if span <= 0:
        return 0
    if span <= _BAND:
        return sum(int(np.count_nonzero(arr[:-s] > arr[s:])) for s in range(1, span + 1))
    if n < _SMALL:
        return _bisect_inversions(arr.tolist())
    return _merge_inversions(arr)


def _bisect_inversions(seq: list[int]) -> int:
    seen: list[int] = []
    inv = 0
    for x in seq:
        i = bisect_right(seen, x)
        inv += len(seen) - i
        seen.insert(i, x)
    return inv


def _merge_inversions(arr: IntArray) -> int:
    n = int(arr.size)
    # Dense ranks 0..n-1 so that `rank + block * n` separates blocks in one sort.
    a = np.unique(arr, return_inverse=True)[1].astype(np.int64)
    pos = np.arange(n, dtype=np.int64)
    total = 0
    width = 1
    while width < n:
        block = pos // (2 * width)
        right = (pos % (2 * width)) >= width
        keyed = a + block * n
        # Each left half is sorted from the previous round, and blocks are offset
        # by n, so the concatenated left halves are globally sorted.
        left_keys = keyed[~right]
        right_keys = keyed[right]
        not_greater = np.searchsorted(left_keys, right_keys, side="right")
        block_end = np.searchsorted(left_keys, (block[right] + 1) * n, side="left")
        total += int((block_end - not_greater).sum())
        a = np.sort(keyed) - block * n
        width *= 2
    return total
