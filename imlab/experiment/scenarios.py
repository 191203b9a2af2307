"""The load scenarios, as both a real run (`loadtest`) and a simulated one (`sim`) lay
them out: the scenario names, who the users are, who talks to whom, the churn spells,
and the phase of each user's open-loop schedule. Pure code, no I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from imlab import protocol as p

SCENARIOS: dict[str, str] = {
    "dm": "pairs of users chatting 1:1 (user 2k with 2k+1)",
    "group": "groups of 8 (by user index), every member talking (the seed's example)",
    "burst": "every member of a group sends at the same instant, repeatedly",
    "large-group": "one group of all users (several hundred), everyone talking",
    "churn": "dm pairs whose users drop off and come back at random",
}
GROUP_SCENARIOS = frozenset({"group", "burst", "large-group"})
DEFAULT_GROUP_SIZE = 8
GOLDEN = (math.sqrt(5) - 1) / 2  # spreads phases evenly over a period


class PlanError(ValueError):
    """A plan that cannot run (unknown scenario, too few users, a stage without groups)."""


@dataclass
class ChurnSpec:
    """Which users drop off and how: online and offline spells are exponential.

    A drop is `silent` with probability `silent_fraction`: the device loses its network
    without a goodbye, so the server still counts the user online and pushes into the
    void (the seed's "socket just died"); otherwise the client disconnects cleanly.
    """

    fraction: float = 0.0  # of the users that churn
    online_mean: float = 2.0  # seconds
    offline_mean: float = 1.0
    silent_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0 or not 0.0 <= self.silent_fraction <= 1.0:
            raise PlanError("churn fractions must be in [0, 1]")
        if self.online_mean <= 0 or self.offline_mean <= 0:
            raise PlanError("churn spells must be positive")


class ChurnClock:
    """One user's random online/offline spells, reproducible from the plan's seed."""

    def __init__(self, spec: ChurnSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng

    def online_for(self) -> float:
        return min(self.rng.expovariate(1.0 / self.spec.online_mean), 5 * self.spec.online_mean)

    def offline_for(self) -> float:
        spell = self.rng.expovariate(1.0 / self.spec.offline_mean)
        return min(max(spell, 0.05), 5 * self.spec.offline_mean)

    def silent(self) -> bool:
        return self.rng.random() < self.spec.silent_fraction


# ---------------------------------------------------------------- membership


def user_names(n: int, tag: str) -> list[str]:
    """`u0000-<tag>` ...; the tag keeps runs apart when they share a Redis."""
    width = max(4, len(str(n - 1)))
    return [f"u{i:0{width}d}-{tag}" for i in range(n)]


def dm_partner(index: int, n: int) -> int:
    """2k talks to 2k+1; with an odd count the last user talks to user 0."""
    partner = index ^ 1
    return partner if partner < n else 0


def group_indices(scenario: str, n: int, group_size: int) -> list[list[int]]:
    """Consecutive users form a group; a lone leftover joins the previous group."""
    if scenario == "large-group":
        return [list(range(n))]
    groups = [list(range(k, min(k + group_size, n))) for k in range(0, n, group_size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        groups[-2] += groups.pop()
    return groups


def check_scenario(
    scenario: str, n: int, group_size: int, features: set[str] | None = None
) -> None:
    """Raise PlanError when the scenario cannot run with these users on this stage."""
    if scenario not in SCENARIOS:
        raise PlanError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if n < 2:
        raise PlanError("a load run needs at least 2 users")
    if scenario in GROUP_SCENARIOS:
        if features is not None and p.FEATURE_GROUPS not in features:
            raise PlanError(f"scenario {scenario!r} needs groups, which this stage does not have")
        if scenario != "large-group" and group_size < 2:
            raise PlanError("groups need at least 2 members")
        if scenario == "large-group" and n > p.MAX_GROUP_MEMBERS:
            raise PlanError(f"a group has at most {p.MAX_GROUP_MEMBERS} members")


def phase(key: int, rate: float) -> float:
    """Offset of a schedule within one period: golden-ratio spacing of `key`."""
    return ((key * GOLDEN) % 1.0) / rate


def churners(seed: int, n: int, fraction: float) -> frozenset[int]:
    """Which of `n` users churn: an exact fraction, reproducible from the seed."""
    order = list(range(n))
    random.Random(f"{seed}:churners").shuffle(order)
    return frozenset(order[: round(fraction * n)])
