"""Closed-form queueing results (M/M/1, M/M/c via Erlang C, M/G/1) to validate the simulator.

Rates are per unit of time; `offered_load` is arrival rate / service rate (Erlangs).
"""

from __future__ import annotations

__all__ = [
    "erlang_b",
    "erlang_c",
    "mg1_mean_wait",
    "mm1_mean_wait",
    "mmc_mean_response",
    "mmc_mean_wait",
]


def erlang_b(servers: int, offered_load: float) -> float:
    """Blocking probability of M/M/c/c, by the stable recursion B(k) = aB(k-1) / (k + aB(k-1))."""
    if servers < 1:
        raise ValueError("servers must be at least 1")
    if offered_load < 0:
        raise ValueError("offered_load must not be negative")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival to M/M/c has to wait; needs offered_load < servers."""
    if offered_load >= servers:
        raise ValueError("unstable: offered_load must be below the number of servers")
    b = erlang_b(servers, offered_load)
    return servers * b / (servers - offered_load * (1.0 - b))


def mmc_mean_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in queue (before service) of M/M/c: C(c, a) / (c*mu - lambda)."""
    a = arrival_rate / service_rate
    return erlang_c(servers, a) / (servers * service_rate - arrival_rate)


def mmc_mean_response(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in system of M/M/c: the wait plus one mean service time."""
    return mmc_mean_wait(arrival_rate, service_rate, servers) + 1.0 / service_rate


def mm1_mean_wait(arrival_rate: float, service_rate: float) -> float:
    """Mean time in queue of M/M/1: rho / (mu - lambda)."""
    return mmc_mean_wait(arrival_rate, service_rate, 1)


def mg1_mean_wait(arrival_rate: float, mean_service: float, scv: float) -> float:
    """Mean time in queue of M/G/1 (Pollaczek-Khinchine); `scv` is the service time's cv²."""
    rho = arrival_rate * mean_service
    if rho >= 1:
        raise ValueError("unstable: utilisation must be below 1")
    return rho * mean_service * (1.0 + scv) / (2.0 * (1.0 - rho))
