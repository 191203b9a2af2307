"""The fast parts the stage models run on when a run has millions of messages.

`FifoServer` is a single-threaded process (an asyncio event loop, or Redis) as one
FIFO server computed by the Lindley recursion: a job's finish time is known when
it arrives, so a visit costs one arithmetic step instead of a SimPy Resource
request. Fault windows are known in advance (they come from the fault spec), so
pauses (SIGSTOP: work waits) and down windows (SIGKILL: work is refused or lost)
are applied analytically. It is checked against `tests.sim_oracles.Station` and queueing
theory in the tests. `Sampler` draws from a distribution in numpy blocks, and
`LogHistogram` keeps a latency distribution in constant memory.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array

import numpy as np

from sim.params import Dist

__all__ = ["FifoServer", "LogHistogram", "Machine", "Refused", "Sampler"]


class Refused(Exception):
    """A process that was down refused a job, or died before finishing it, at time `at`."""

    def __init__(self, at: float) -> None:
        super().__init__(at)
        self.at = at


class FifoServer:
    """One FIFO server: jobs are served one at a time in arrival order.

    `serve(t, s)` must be called in non-decreasing order of `t` (it is, when called
    from a simulation's events) and returns when the job finishes. While paused
    the server holds its work and resumes it afterwards; while down it refuses
    arrivals, and a job that would still be queued or in service when it goes
    down is lost (`Refused` at the moment it went down).
    """

    __slots__ = ("_first", "_windows", "busy", "free_at", "jobs", "machine", "name", "refused")

    def __init__(self, name: str) -> None:
        self.name = name
        self.machine: Machine | None = None  # cores shared with other processes, if any
        self.free_at = 0.0
        self.busy = 0.0
        self.jobs = 0
        self.refused = 0
        self._windows: list[tuple[float, float, bool]] = []  # (start, end, refuse), by start
        self._first = 0  # windows before this index ended before the latest arrival

    def pause(self, start: float, end: float) -> None:
        """Hold all work in [start, end) (a SIGSTOPped process)."""
        bisect.insort(self._windows, (start, end, False))

    def down(self, start: float, end: float = math.inf) -> None:
        """Refuse and lose all work in [start, end) (a killed process, restarted at end)."""
        bisect.insort(self._windows, (start, end, True))

    def is_down(self, t: float) -> bool:
        return any(refuse and a <= t < b for a, b, refuse in self._windows)

    def is_paused(self, t: float) -> bool:
        return any(not refuse and a <= t < b for a, b, refuse in self._windows)

    def utilisation(self, now: float) -> float:
        return self.busy / now if now > 0 else 0.0

    def serve(self, t: float, s: float) -> float:
        start = t if t > self.free_at else self.free_at
        cpu = s
        if self.machine is not None:
            s = self.machine.stretch(self.name, start, s)
        done = start + s
        if self._windows:
            done = self._through_windows(t, start, s)
        self.free_at = done
        self.busy += cpu
        self.jobs += 1
        return done

    def _through_windows(self, t: float, start: float, s: float) -> float:
        windows = self._windows
        while self._first < len(windows) and windows[self._first][1] <= t:
            self._first += 1
        done = start + s
        for a, b, refuse in windows[self._first :]:
            if a >= done:
                break
            if refuse:  # down at any moment between arrival and finish: the job is lost
                self.refused += 1
                raise Refused(t if a <= t else a)
            if b <= start:
                continue
            if a <= start:
                start = b
                done = b + s
            else:
                done += b - a
        return done


class Machine:
    """The cores a set of processes share (`Params.machine_cores`): this machine's two.

    Each process stays a FIFO server of its own; the machine shares its cores among the
    processes that want them, as the kernel's fair scheduler does (processor sharing): a
    burst of CPU runs at the speed of min(1, cores / (1 + the others' demand)), where
    the others' demand is their recent work (an exponentially decaying sum with time
    constant `tau`, per process) plus their idle burn (`background`, in cores: timers,
    pings, the JVM's housekeeping). While the others leave a core free nothing slows;
    past that every process slows in proportion, and the busiest one's queue grows,
    which is how a full machine fails. `cores` may be fractional: a virtual machine's
    cores give less than a core each when their host is busy (this one's gave about 1.7
    of 2 at saturation, docs/RESULTS.md). A mean-value approximation, not a scheduler:
    it gets the machine's saturation and the slowdown before it, not wake-up delays."""

    __slots__ = ("_demand", "_t", "background", "cores", "max_stretch", "tau")

    def __init__(
        self, cores: float, background: float = 0.0, *, tau: float = 0.25, max_stretch: float = 50.0
    ) -> None:
        if cores <= 0 or background < 0 or tau <= 0:
            raise ValueError("a machine needs cores > 0, background >= 0 and tau > 0")
        self.cores = cores
        self.background = background
        self.tau = tau
        self.max_stretch = max_stretch
        self._demand: dict[str, float] = {}  # process -> cores' worth of recent work
        self._t: dict[str, float] = {}

    def _decayed(self, name: str, t: float) -> float:
        last = self._t.get(name, t)
        d = self._demand.get(name, 0.0)
        return d * math.exp((last - t) / self.tau) if t > last else d

    def load(self, t: float) -> float:
        """Cores' worth of demand at `t`: every process's recent work and the idle burn."""
        return self.background + sum(self._decayed(n, t) for n in self._demand)

    def stretch(self, name: str, t: float, s: float) -> float:
        """Record a burst of `s` CPU seconds of process `name` starting at `t`; return
        how long it takes on the shared cores."""
        others = self.background
        for other in self._demand:
            if other != name:
                others += self._decayed(other, t)
        factor = min(max(1.0, (others + 1.0) / self.cores), self.max_stretch)
        self._demand[name] = self._decayed(name, t) + s * factor / self.tau
        self._t[name] = max(t, self._t.get(name, t))
        return s * factor


class Sampler:
    """Draws of one `Dist` from its own seeded stream, generated 4096 at a time with numpy."""

    __slots__ = ("_buf", "_gen", "_i", "_mu", "_sigma", "mean")

    _BLOCK = 4096

    def __init__(self, dist: Dist, rng: random.Random) -> None:
        self.mean = dist.mean
        self._gen = np.random.Generator(np.random.PCG64(rng.getrandbits(64)))
        self._mu = math.nan
        self._sigma = 0.0
        if dist.cv > 0 and dist.mean > 0:
            sigma2 = math.log1p(dist.cv * dist.cv)
            self._mu = math.log(dist.mean) - sigma2 / 2.0
            self._sigma = math.sqrt(sigma2)
        self._buf: list[float] = [dist.mean] * self._BLOCK
        self._i = 0
        self._refill()

    def __call__(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._refill()
            i = 0
        self._i = i + 1
        return self._buf[i]

    def _refill(self) -> None:
        if self._sigma:
            self._buf = self._gen.lognormal(self._mu, self._sigma, self._BLOCK).tolist()
        self._i = 0


class LogHistogram:
    """Counts of positive values in buckets 1% wide from 1 µs up; quantiles to within 1%."""

    __slots__ = ("count", "counts", "max", "total")

    _LO = 1e-6
    _K = 1.0 / math.log(1.01)

    def __init__(self) -> None:
        self.counts = array("q", [0] * 2400)  # 1 µs · 1.01^2400 ≈ 2e4 s
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        if x > self.max:
            self.max = x
        i = int(math.log(x / self._LO) * self._K) if x > self._LO else 0
        self.counts[i if i < 2400 else 2399] += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile (the upper edge of its bucket), None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self._LO * 1.01 ** (i + 1), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | int | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        return {
            "count": self.count,
            "mean": ms(self.total / self.count) if self.count else None,
            "p50": ms(self.quantile(0.5)),
            "p90": ms(self.quantile(0.9)),
            "p99": ms(self.quantile(0.99)),
            "p99_9": ms(self.quantile(0.999)),
            "max": ms(self.max) if self.count else None,
        }
