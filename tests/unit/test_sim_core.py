"""Behaviour of the simulation building blocks: distributions, streams, stations, links."""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from itertools import pairwise
from typing import Any

import pytest
import simpy
from simpy.events import Event

from sim.core import UNAVAILABLE, Deterministic, Exponential, LogNormal, RandomStreams, Tally
from tests.sim_oracles import DownPolicy, NetworkLink, Station, Visit


def test_named_streams_are_reproducible_and_independent() -> None:
    a, b = RandomStreams(7), RandomStreams(7)
    first = [a.stream("arrivals").random() for _ in range(3)]
    b.stream("service").random()  # another component drawing first changes nothing
    assert [b.stream("arrivals").random() for _ in range(3)] == first
    assert a.stream("arrivals") is a.stream("arrivals")
    assert RandomStreams(8).stream("arrivals").random() != first[0]


def test_lognormal_from_mean_and_p99() -> None:
    d = LogNormal.from_mean_p99(0.010, 0.050)
    assert d.mean == pytest.approx(0.010)
    assert d.quantile(0.99) == pytest.approx(0.050)
    rng = random.Random(1)
    samples = sorted(d.sample(rng) for _ in range(40_000))
    assert sum(samples) / len(samples) == pytest.approx(0.010, rel=0.03)
    assert samples[int(0.99 * len(samples))] == pytest.approx(0.050, rel=0.05)


def test_lognormal_from_mean_and_cv() -> None:
    d = LogNormal.from_mean_cv(2.0, 0.5)
    assert d.mean == pytest.approx(2.0)
    rng = random.Random(2)
    xs = [d.sample(rng) for _ in range(40_000)]
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    assert std / mean == pytest.approx(0.5, rel=0.05)


def test_lognormal_rejects_impossible_tails() -> None:
    with pytest.raises(ValueError, match="need 0 < mean < p99"):
        LogNormal.from_mean_p99(1.0, 0.5)
    with pytest.raises(ValueError, match=r"no log-normal has mean 1\.0 and p99 100"):
        LogNormal.from_mean_p99(1.0, 100.0)


def test_exponential_and_deterministic() -> None:
    rng = random.Random(3)
    xs = [Exponential(0.25).sample(rng) for _ in range(40_000)]
    assert sum(xs) / len(xs) == pytest.approx(0.25, rel=0.03)
    assert Deterministic(0.5).sample(rng) == 0.5 and Deterministic(0.5).mean == 0.5
    with pytest.raises(ValueError):
        Exponential(0.0)


def test_tally() -> None:
    t = Tally()
    for x in (3.0, 1.0, 2.0, 4.0):
        t.add(x)
    assert (t.count, t.mean, t.max) == (4, 2.5, 4.0)
    assert t.quantile(0.5) == 2.0 and t.quantile(1.0) == 4.0
    t.reset()
    assert t.count == 0 and math.isnan(t.mean)


def _station(env: simpy.Environment, policy: DownPolicy, servers: int = 1) -> Station:
    return Station(
        env, "s", Deterministic(10.0), random.Random(0), servers=servers, down_policy=policy
    )


def _submit_at(env: simpy.Environment, station: Station, at: float, out: list[Visit]) -> None:
    def job() -> Generator[Event, Any, None]:
        yield env.timeout(at)
        out.append((yield station.submit()))

    env.process(job())


def test_station_serves_fifo_with_c_servers() -> None:
    env = simpy.Environment()
    station = _station(env, DownPolicy.WAIT, servers=2)
    visits: list[Visit] = []
    for _ in range(3):
        _submit_at(env, station, 0.0, visits)
    env.run()
    assert [(v.started, v.finished) for v in visits] == [(0, 10), (0, 10), (10, 20)]
    assert station.waits.mean == pytest.approx(10 / 3)
    assert station.utilisation() == pytest.approx(30 / 40)


def test_wait_policy_pauses_service_and_resumes_after_repair() -> None:
    env = simpy.Environment()
    station = _station(env, DownPolicy.WAIT)
    visits: list[Visit] = []
    _submit_at(env, station, 0.0, visits)  # in service when the outage starts
    _submit_at(env, station, 5.0, visits)  # queued through the outage
    _submit_at(env, station, 7.0, visits)  # arrives during the outage
    station.outage(start=4.0, duration=6.0)
    env.run()
    # The first job had 6 s left at t=4 and finishes at 10 + 6.
    assert [(v.arrived, v.started, v.finished, v.ok) for v in visits] == [
        (0.0, 0.0, 16.0, True),
        (5.0, 16.0, 26.0, True),
        (7.0, 26.0, 36.0, True),
    ]
    assert station.outages == [(4.0, 10.0)] and station.refused == 0


def test_wait_policy_idle_server_does_not_start_work_while_down() -> None:
    env = simpy.Environment()
    station = _station(env, DownPolicy.WAIT)
    visits: list[Visit] = []
    _submit_at(env, station, 2.0, visits)
    station.outage(start=1.0, duration=4.0)
    env.run()
    assert (visits[0].started, visits[0].finished) == (5.0, 15.0)


@pytest.mark.parametrize(
    ("windows", "finished", "outages"),
    [
        ([(4.0, 2.0), (6.0, 2.0)], 14.0, [(4.0, 8.0)]),  # back to back
        ([(4.0, 3.0), (5.0, 4.0)], 15.0, [(4.0, 9.0)]),  # overlapping
        ([(2.0, 1.0), (5.0, 1.0)], 12.0, [(2.0, 3.0), (5.0, 6.0)]),
    ],
)
def test_outage_windows_nest(
    windows: list[tuple[float, float]], finished: float, outages: list[tuple[float, float]]
) -> None:
    env = simpy.Environment()
    station = _station(env, DownPolicy.WAIT)
    visits: list[Visit] = []
    _submit_at(env, station, 0.0, visits)
    for start, duration in windows:
        station.outage(start, duration)
    env.run()
    assert visits[0].finished == finished and station.outages == outages


def test_refuse_policy_fails_everything_held_and_refuses_arrivals() -> None:
    env = simpy.Environment()
    station = _station(env, DownPolicy.REFUSE)
    visits: list[Visit] = []
    _submit_at(env, station, 0.0, visits)  # in service: fails at 4
    _submit_at(env, station, 1.0, visits)  # queued: fails at 4
    _submit_at(env, station, 6.0, visits)  # arrives while down: refused at once
    _submit_at(env, station, 12.0, visits)  # after repair: served
    station.outage(start=4.0, duration=6.0)
    env.run()
    got = sorted((v.arrived, v.started, v.finished, v.err) for v in visits)
    assert got == [
        (0.0, 0.0, 4.0, UNAVAILABLE),
        (1.0, None, 4.0, UNAVAILABLE),
        (6.0, None, 6.0, UNAVAILABLE),
        (12.0, 12.0, 22.0, None),
    ]
    assert (station.served, station.refused) == (1, 3)
    assert station.busy == 0 and station.queue_length == 0
    assert station.busy_time == pytest.approx(4.0 + 10.0)


def test_network_link_keeps_fifo_order() -> None:
    env = simpy.Environment()
    link = NetworkLink(env, Exponential(1.0), random.Random(5))
    arrived: list[tuple[float, int]] = []
    store: simpy.Store = simpy.Store(env)

    def sender() -> Generator[Event, Any, None]:
        for i in range(200):
            link.deliver(i, store.put)
            yield env.timeout(0.1)

    def receiver() -> Generator[Event, Any, None]:
        while True:
            item = yield store.get()
            arrived.append((env.now, item))

    env.process(sender())
    env.process(receiver())
    env.run(until=1000)
    assert [i for _, i in arrived] == list(range(200))
    assert all(t1 <= t2 for (t1, _), (t2, _) in pairwise(arrived))


def test_network_link_without_fifo_may_reorder() -> None:
    env = simpy.Environment()
    link = NetworkLink(env, Exponential(1.0), random.Random(5), fifo=False)
    got: list[int] = []

    def sender() -> Generator[Event, Any, None]:
        for i in range(200):
            link.deliver(i, got.append)
            yield env.timeout(0.1)

    env.process(sender())
    env.run()
    assert sorted(got) == list(range(200)) and got != list(range(200))
