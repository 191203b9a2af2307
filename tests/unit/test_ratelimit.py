"""Unit tests of `imlab.ratelimit`: the token bucket's arithmetic, given times only,
and the keyed limiter's bounded memory; property tests with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imlab.ratelimit import KeyedLimiter, TokenBucket


def test_a_new_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(10.0) == pytest.approx(0.5)
    assert b.take(10.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert b.take(10.5) == 0.0
    assert b.take(10.5, cost=2) == pytest.approx(1.0)


def test_idle_time_refills_up_to_the_burst_only() -> None:
    b = TokenBucket(rate=1.0, burst=2)
    b.take(0.0, cost=2)
    assert b.level(1000.0) == 2.0
    assert b.full(1000.0)


def test_a_clock_going_back_adds_nothing() -> None:
    b = TokenBucket(rate=1.0, burst=1)
    assert b.take(100.0) == 0.0
    assert b.take(50.0) == pytest.approx(1.0)
    assert b.take(100.5) == pytest.approx(0.5)
    assert b.take(101.0) == 0.0


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 1), (1, 0.5), (float("inf"), 1),
                                        (1, float("inf")), (float("nan"), 1)])  # fmt: skip
def test_bad_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_a_cost_above_the_burst_is_an_error_not_a_wait_forever() -> None:
    with pytest.raises(ValueError):
        TokenBucket(1.0, 2).take(0.0, cost=3)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 2).take(0.0, cost=-1)


times = st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=60).map(sorted)
params = st.tuples(st.floats(0.1, 100), st.integers(1, 20))


@settings(max_examples=200, deadline=None)
@given(params, times)
def test_allowed_requests_never_exceed_burst_plus_rate_times_elapsed(
    rb: tuple[float, int], ts: list[float]
) -> None:
    rate, burst = rb
    b = TokenBucket(rate, burst)
    allowed = [t for t in ts if b.take(t) == 0.0]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            n = j - i + 1
            assert n <= burst + (allowed[j] - start) * rate + 1e-6


@settings(max_examples=200, deadline=None)
@given(params, times, st.floats(0.1, 1.0))
def test_waiting_the_time_it_says_is_enough(
    rb: tuple[float, int], ts: list[float], cost_share: float
) -> None:
    rate, burst = rb
    b = TokenBucket(rate, burst)
    cost = cost_share * burst
    now = 0.0
    for t in ts:
        now = max(now, t)
        wait = b.take(now, cost)
        assert wait >= 0.0
        if wait > 0:
            assert wait <= cost / rate + 1e-9
            now += wait
            assert b.take(now, cost) == 0.0


def test_keyed_limiter_limits_each_key_on_its_own() -> None:
    lim: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=2)
    assert [lim.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert lim.take("b", 0.0) == 0.0
    assert lim.refused == 1


def test_keyed_limiter_forgets_buckets_once_they_are_full_again() -> None:
    lim: KeyedLimiter[int] = KeyedLimiter(rate=10.0, burst=5)
    for k in range(100):
        lim.take(k, 0.0)
    assert len(lim) == 100
    for i in range(100):  # later, one busy key: the idle ones go a few per call
        lim.take("busy", 1.0 + i * 0.1)
    assert len(lim) == 1
    assert lim.sweep(100.0) == 1 and len(lim) == 0


def test_keyed_limiter_keeps_a_key_it_just_charged() -> None:
    lim: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=1)
    assert lim.take("a", 0.0) == 0.0
    assert lim.take("a", 100.0) == 0.0  # full again: forgotten and started anew
    assert lim.take("a", 100.0) == pytest.approx(1.0)  # but this take was kept


def test_keyed_limiter_never_holds_more_than_max_keys() -> None:
    lim: KeyedLimiter[int] = KeyedLimiter(rate=0.001, burst=1, max_keys=10)
    for k in range(50):
        lim.take(k, 0.0)
        assert len(lim) <= 10
    assert lim.evicted_early == 40
    assert lim.take(49, 0.0) > 0  # the recent ones are still limited


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.floats(0, 5, allow_nan=False)), max_size=200),
    st.integers(1, 40),
)
def test_keyed_limiter_answers_like_one_bucket_per_key_while_it_has_room(
    calls: list[tuple[int, float]], max_keys: int
) -> None:
    lim: KeyedLimiter[int] = KeyedLimiter(rate=2.0, burst=3, max_keys=max_keys)
    reference: dict[int, TokenBucket] = {}
    now = 0.0
    for key, dt in calls:
        now += dt
        expected = reference.setdefault(key, TokenBucket(2.0, 3)).take(now)
        got = lim.take(key, now)
        assert len(lim) <= max_keys
        if lim.evicted_early == 0:
            assert got == pytest.approx(expected, abs=1e-9)
        else:
            assert got <= expected + 1e-9  # an early eviction only loosens
