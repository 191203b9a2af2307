"""Token-bucket rate limits, sans-I/O: nothing here reads the clock; every call is given
`now` (seconds, any monotonic-ish origin), so the same code runs in a server, in the
simulator and in tests with made-up times.

A bucket holds at most `burst` tokens and gains `rate` tokens a second; a request takes
`cost` tokens (1 by default) or is refused with the seconds until it would be allowed
(what a `rate_limited` error ack sends as `retry_after`). A refused request takes
nothing. `KeyedLimiter` keeps one bucket per key (a user, an address) and forgets a
bucket once it is full again, since a full bucket is the same as a new one: its memory
follows the keys active within the last `burst / rate` seconds, capped at `max_keys`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

# Float slack: after waiting exactly the returned time, a request is allowed.
_EPSILON = 1e-9
DEFAULT_MAX_KEYS = 100_000

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """One token bucket; starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst >= 1 or rate == float("inf") or burst == float("inf"):
            raise ValueError("a token bucket needs a finite rate > 0 and a finite burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.last: float | None = None  # when the tokens were last brought up to date

    def _refill(self, now: float) -> None:
        if self.last is None:
            self.last = now
        elif now > self.last:  # a clock that goes back adds nothing and moves nothing
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def level(self, now: float) -> float:
        """The tokens available at `now`."""
        self._refill(now)
        return self.tokens

    def full(self, now: float) -> bool:
        """Whether the bucket is full at `now` (then it is the same as a new one)."""
        return self.level(now) >= self.burst - _EPSILON

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens at `now`: 0.0 when allowed, else the seconds until it would
        be (nothing is taken then). `cost` must be within [0, burst]."""
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost must be within [0, burst={self.burst:g}], not {cost!r}")
        self._refill(now)
        if self.tokens >= cost - _EPSILON:
            self.tokens = max(0.0, self.tokens - cost)
            return 0.0
        return (cost - self.tokens) / self.rate


class KeyedLimiter(Generic[K]):
    """A token bucket per key, all with the same `rate` and `burst`.

    Buckets are kept in the order of their last use; each `take` forgets the least
    recently used buckets that are full again (at most a few per call, so a call costs
    O(1) amortized). If `max_keys` buckets are all in use, the least recently used one
    is dropped anyway (`evicted_early` counts them): its key then starts again from a
    full bucket, so the limit for it can only be looser, never stricter.
    """

    SWEEP_PER_CALL = 4

    def __init__(self, rate: float, burst: float, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        TokenBucket(rate, burst)  # checks the parameters
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: OrderedDict[K, TokenBucket] = OrderedDict()
        self.evicted_early = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self.buckets)

    def take(self, key: K, now: float, cost: float = 1.0) -> float:
        """Like `TokenBucket.take`, on `key`'s bucket."""
        self._forget(now)  # before the lookup: a bucket forgotten here is as good as new
        bucket = self.buckets.get(key)
        if bucket is None:
            while len(self.buckets) >= self.max_keys:
                self.buckets.popitem(last=False)
                self.evicted_early += 1
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        else:
            self.buckets.move_to_end(key)
        wait = bucket.take(now, cost)
        if wait > 0:
            self.refused += 1
        return wait

    def sweep(self, now: float) -> int:
        """Forget every bucket that is full at `now`; returns how many."""
        full = [k for k, b in self.buckets.items() if b.full(now)]
        for k in full:
            del self.buckets[k]
        return len(full)

    def _forget(self, now: float) -> None:
        for _ in range(self.SWEEP_PER_CALL):
            if not self.buckets:
                return
            key, oldest = next(iter(self.buckets.items()))
            if not oldest.full(now):
                return
            del self.buckets[key]
