"""Test-only oracles of the simulator: a general `Station` (c servers in front of one
queue, with outage windows) and a one-way `NetworkLink`, built on SimPy's own
resources. The models run on `sim.engine`'s faster FIFO server; the tests check it,
and queueing theory, against these."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import simpy
from simpy.events import Event, Process, Timeout

from sim.core import UNAVAILABLE, Distribution, Tally

__all__ = ["DownPolicy", "NetworkLink", "Station", "Visit"]

T = TypeVar("T")


# --------------------------------------------------------------------------- stations


class DownPolicy(Enum):
    """What a station does with work while it is down."""

    WAIT = "wait"
    """Work in service pauses and resumes its remaining time after repair; the queue and
    new arrivals wait (the machine-shop pattern: a slow-down, nothing is lost)."""

    REFUSE = "refuse"
    """Work in service and in the queue fails, and arrivals are refused until repair
    (a crashed process or a dead Redis: clients see errors)."""


@dataclass(slots=True)
class Visit:
    """What happened to one job at a station."""

    station: str
    arrived: float
    started: float | None
    """When service began; None if the job was refused before it got a server."""
    finished: float
    err: str | None = None

    @property
    def ok(self) -> bool:
        return self.err is None

    @property
    def wait(self) -> float:
        return (self.finished if self.started is None else self.started) - self.arrived

    @property
    def response(self) -> float:
        return self.finished - self.arrived


class Station:
    """A service centre: `servers` identical servers (a simpy.Resource) in front of one FIFO queue.

    `submit()` starts a job and returns its process, whose value is the job's
    `Visit`; waits and response times of served jobs go into `waits` and
    `responses`. `fail()`/`repair()` (or `outage()`) take the station down the
    way SimPy's machine-shop example breaks a machine: jobs in service are
    interrupted, then resume or fail according to `down_policy`.
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        service: Distribution,
        rng: random.Random,
        *,
        servers: int = 1,
        down_policy: DownPolicy = DownPolicy.WAIT,
        keep_samples: bool = True,
    ) -> None:
        if servers < 1:
            raise ValueError("a station needs at least one server")
        self.env = env
        self.name = name
        self.service = service
        self.rng = rng
        self.servers = servers
        self.down_policy = down_policy
        self.resource = simpy.Resource(env, capacity=servers)
        self.waits = Tally(keep=keep_samples)
        self.responses = Tally(keep=keep_samples)
        self.served = 0
        self.refused = 0
        self.busy_time = 0.0
        self.outages: list[tuple[float, float | None]] = []
        self._down = 0  # how many outages are in force; overlapping windows nest
        self._repaired = env.event()
        self._queued: set[Process] = set()
        self._in_service: set[Process] = set()

    @property
    def is_down(self) -> bool:
        return self._down > 0

    @property
    def queue_length(self) -> int:
        return len(self.resource.queue)

    @property
    def busy(self) -> int:
        return len(self.resource.users)

    def utilisation(self) -> float:
        """Fraction of server time since time 0 spent on service that has ended."""
        return self.busy_time / (self.servers * self.env.now) if self.env.now else 0.0

    def submit(self, service_time: float | None = None) -> Process:
        """Start a job now; its process ends with the job's `Visit`.

        The service time is drawn from `service` when service starts, unless given.
        """
        return self.env.process(self._visit(service_time))

    def fail(self) -> None:
        """Go down now: interrupt the jobs in service (and, under REFUSE, the queued ones).

        Calls nest: the station is up again after as many `repair()` calls.
        """
        self._down += 1
        if self._down > 1:
            return
        self.outages.append((self.env.now, None))
        victims = list(self._in_service)
        if self.down_policy is DownPolicy.REFUSE:
            victims += self._queued
        for proc in victims:
            proc.interrupt(UNAVAILABLE)

    def repair(self) -> None:
        """End one outage; when none is left the station is up and held jobs carry on."""
        if not self._down:
            return
        self._down -= 1
        if self._down:
            return
        start, _ = self.outages[-1]
        self.outages[-1] = (start, self.env.now)
        repaired, self._repaired = self._repaired, self.env.event()
        repaired.succeed()

    def outage(self, start: float, duration: float) -> Process:
        """Schedule a down window [start, start + duration) in absolute simulated time."""

        def window() -> Generator[Event, Any, None]:
            yield self.env.timeout(max(0.0, start - self.env.now))
            self.fail()
            yield self.env.timeout(duration)
            self.repair()

        return self.env.process(window())

    def _visit(self, service_time: float | None) -> Generator[Event, Any, Visit]:
        env = self.env
        arrived = env.now
        if self._down and self.down_policy is DownPolicy.REFUSE:
            return self._refuse(arrived, None)
        me = env.active_process
        assert me is not None
        with self.resource.request() as req:
            self._queued.add(me)
            try:
                yield req
            except simpy.Interrupt:
                return self._refuse(arrived, None)
            finally:
                self._queued.discard(me)
            # A server that was idle when the station failed must not start work.
            while self._down:
                yield self._repaired
            started = env.now
            total = self.service.sample(self.rng) if service_time is None else service_time
            remaining = total
            while True:
                self._in_service.add(me)
                begun = env.now
                try:
                    yield env.timeout(remaining)
                except simpy.Interrupt:
                    self._in_service.discard(me)
                    remaining -= env.now - begun
                    if self.down_policy is DownPolicy.REFUSE:
                        self.busy_time += total - remaining
                        return self._refuse(arrived, started)
                    while self._down:
                        yield self._repaired
                    continue
                self._in_service.discard(me)
                break
        finished = env.now
        self.busy_time += total
        self.served += 1
        self.waits.add(started - arrived)
        self.responses.add(finished - arrived)
        return Visit(self.name, arrived, started, finished)

    def _refuse(self, arrived: float, started: float | None) -> Visit:
        self.refused += 1
        return Visit(self.name, arrived, started, self.env.now, UNAVAILABLE)


# --------------------------------------------------------------------------- network


class NetworkLink:
    """One direction of a connection: each message arrives after a random delay.

    With `fifo` (a TCP connection) a message never overtakes an earlier one: its
    arrival is pushed back to the previous arrival if its own delay is shorter.
    """

    def __init__(
        self,
        env: simpy.Environment,
        delay: Distribution,
        rng: random.Random,
        *,
        name: str = "link",
        fifo: bool = True,
    ) -> None:
        self.env = env
        self.delay = delay
        self.rng = rng
        self.name = name
        self.fifo = fifo
        self._last_arrival = -math.inf

    def arrival_time(self) -> float:
        """When a message sent now arrives (advances the link's FIFO clock)."""
        arrival = self.env.now + self.delay.sample(self.rng)
        if self.fifo:
            arrival = max(arrival, self._last_arrival)
            self._last_arrival = arrival
        return arrival

    def transit(self) -> Timeout:
        """An event that fires when a message sent now arrives; yield it to travel along."""
        return self.env.timeout(self.arrival_time() - self.env.now)

    def deliver(self, item: T, handler: Callable[[T], object]) -> None:
        """Hand `item` to `handler` (e.g. a simpy.Store's `put`) when it arrives."""

        def arrive(_event: Event) -> None:
            handler(item)

        self.transit().callbacks.append(arrive)
