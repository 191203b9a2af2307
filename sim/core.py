"""Queueing building blocks the stage models are made of.

Service-time distributions, named seeded random streams and a `Tally` of samples.
Every random draw comes from a `random.Random` handed in by the caller, so a model's
run is a pure function of its seed. (The tests' `Station` and `NetworkLink` oracles
live in `tests/sim_oracles.py`.)
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

__all__ = [
    "UNAVAILABLE",
    "Deterministic",
    "Distribution",
    "Exponential",
    "LogNormal",
    "RandomStreams",
    "Tally",
]

UNAVAILABLE = "unavailable"
"""The error of a visit refused by a station that is down (the protocol's error code)."""

_Z99 = NormalDist().inv_cdf(0.99)


# --------------------------------------------------------------------------- randomness


class RandomStreams:
    """Independent, reproducible random streams by name, all derived from one seed.

    A component draws from its own stream, so adding a component (or a fault)
    to a model leaves every other component's draws unchanged: two stages run
    with the same seed see the same arrivals.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._streams: dict[str, random.Random] = {}

    def stream(self, name: str) -> random.Random:
        """The stream called `name`, created on first use (string seeds hash with SHA-512)."""
        rng = self._streams.get(name)
        if rng is None:
            rng = self._streams[name] = random.Random(f"{self.seed}/{name}")
        return rng


# --------------------------------------------------------------------------- distributions


class Distribution(Protocol):
    """A non-negative random duration."""

    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True, slots=True)
class Exponential:
    """Exponential durations with the given mean."""

    mean: float

    def __post_init__(self) -> None:
        if not self.mean > 0:
            raise ValueError("an exponential needs a positive mean")

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)


@dataclass(frozen=True, slots=True)
class Deterministic:
    """Always the same duration; draws nothing from the stream."""

    value: float

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("a duration cannot be negative")

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value


@dataclass(frozen=True, slots=True)
class LogNormal:
    """exp(N(mu, sigma²)): the usual shape of measured service and network times."""

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError("sigma cannot be negative")

    @classmethod
    def from_mean_cv(cls, mean: float, cv: float) -> LogNormal:
        """The log-normal with this mean and coefficient of variation (std / mean)."""
        if not mean > 0 or cv < 0:
            raise ValueError("need mean > 0 and cv >= 0")
        sigma2 = math.log1p(cv * cv)
        return cls(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2))

    @classmethod
    def from_mean_p99(cls, mean: float, p99: float) -> LogNormal:
        """The log-normal with this mean and 99th percentile.

        ln(p99 / mean) = z·σ - σ²/2 (z the normal 0.99 quantile) has a solution
        only for mean < p99 <= mean·e^(z²/2) ≈ 15·mean; the smaller σ is taken.
        """
        if not 0 < mean < p99:
            raise ValueError("need 0 < mean < p99")
        gap = math.log(p99 / mean)
        disc = _Z99 * _Z99 - 2.0 * gap
        if disc < 0:
            limit = mean * math.exp(_Z99 * _Z99 / 2.0)
            raise ValueError(f"no log-normal has mean {mean} and p99 {p99} (p99 <= {limit:.4g})")
        sigma = _Z99 - math.sqrt(disc)
        return cls(math.log(mean) - sigma * sigma / 2.0, sigma)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2.0)

    def quantile(self, q: float) -> float:
        return math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q))

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


# --------------------------------------------------------------------------- statistics


class Tally:
    """Count, mean and maximum of observed values, keeping the samples for quantiles."""

    __slots__ = ("count", "keep", "max", "samples", "total")

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.samples = array("d")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        if self.keep:
            self.samples.append(value)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The q-quantile of the kept samples (nearest rank)."""
        if not self.samples:
            return math.nan
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def reset(self) -> None:
        """Forget everything so far, e.g. at the end of a warm-up period."""
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.samples = array("d")
