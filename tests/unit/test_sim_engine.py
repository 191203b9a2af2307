"""The fast FIFO server against the SimPy station it stands in for and against queueing
theory; fault windows; the block sampler and the latency histogram."""

from __future__ import annotations

import random
import statistics
from collections.abc import Generator

import pytest
import simpy

from sim.core import Deterministic
from sim.engine import FifoServer, LogHistogram, Refused, Sampler
from sim.params import Dist
from sim.theory import mm1_mean_wait
from tests.sim_oracles import Station, Visit


def _arrivals(n: int, rate: float, mean_service: float, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, rng.expovariate(1.0 / mean_service)))
    return out


def test_fifo_server_finishes_every_job_when_the_simpy_station_does() -> None:
    jobs = _arrivals(2000, 8.0, 0.1, seed=3)
    env = simpy.Environment()
    station = Station(env, "s", Deterministic(0.0), random.Random(0))
    done: list[float] = []

    def arrive(at: float, service: float) -> simpy.events.Process:
        def go() -> Generator[simpy.events.Event, Visit, None]:
            yield env.timeout(at)
            visit = yield station.submit(service)
            done.append(visit.finished)

        return env.process(go())

    for at, s in jobs:
        arrive(at, s)
    env.run()
    fast = FifoServer("f")
    assert [fast.serve(at, s) for at, s in jobs] == pytest.approx(sorted(done), abs=1e-9)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_fifo_server_mean_wait_matches_mm1(rho: float) -> None:
    mean_service = 0.01
    rate = rho / mean_service
    server = FifoServer("f")
    waits = [server.serve(at, s) - at - s for at, s in _arrivals(400_000, rate, mean_service, 7)]
    expected = mm1_mean_wait(rate, 1.0 / mean_service)
    assert statistics.fmean(waits) == pytest.approx(expected, rel=0.05)


def test_a_pause_holds_work_and_a_down_window_refuses_it() -> None:
    paused = FifoServer("redis")
    paused.pause(10.0, 15.0)
    assert paused.serve(9.0, 0.5) == 9.5
    assert paused.serve(9.9, 0.5) == pytest.approx(15.4)  # interrupted at 10, resumed at 15
    assert paused.serve(12.0, 0.5) == pytest.approx(15.9)  # arrived while paused: queued
    assert paused.serve(20.0, 0.5) == 20.5
    down = FifoServer("server-1")
    down.down(10.0, 15.0)
    assert down.serve(9.0, 0.5) == 9.5
    with pytest.raises(Refused) as lost:
        down.serve(9.8, 0.5)  # in service when killed: lost at the kill
    assert lost.value.at == 10.0
    with pytest.raises(Refused) as refused:
        down.serve(12.0, 0.1)
    assert refused.value.at == 12.0
    assert down.serve(15.0, 0.1) == pytest.approx(15.1)  # restarted with an empty queue
    assert down.is_down(12.0) and not down.is_down(15.0)


def test_sampler_draws_the_distribution_reproducibly() -> None:
    a = Sampler(Dist(0.002, 0.5), random.Random("x"))
    b = Sampler(Dist(0.002, 0.5), random.Random("x"))
    draws = [a() for _ in range(50_000)]
    assert draws[:100] == [b() for _ in range(100)]
    assert statistics.fmean(draws) == pytest.approx(0.002, rel=0.02)
    assert statistics.pstdev(draws) / 0.002 == pytest.approx(0.5, rel=0.05)
    constant = Sampler(Dist(0.25), random.Random("y"))
    assert {constant() for _ in range(5000)} == {0.25}


def test_log_histogram_quantiles_within_a_bucket() -> None:
    h = LogHistogram()
    values = [0.001 * (i + 1) for i in range(1000)]  # 1 ms .. 1 s
    for v in values:
        h.add(v)
    assert h.quantile(0.5) == pytest.approx(0.5, rel=0.011)
    assert h.quantile(0.99) == pytest.approx(0.99, rel=0.011)
    assert h.summary_ms()["max"] == 1000.0
    assert LogHistogram().quantile(0.5) is None
