"""The plan of one load run, decided before Locust starts: who the users are, who talks
to whom, when each user sends (a fixed open-loop schedule), and who drops off when.

Pure data and arithmetic, no I/O beyond reading and writing the plan's JSON: the
runner builds a plan and writes it into the run folder, every Locust process reads
it back, so all of them agree on user names, groups and schedules without talking.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
_GOLDEN = (math.sqrt(5) - 1) / 2  # spreads phases evenly over a period


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


@dataclass
class StepShape:
    """Saturation ramp: start with `step` users, add `step` every `every` seconds."""

    step: int
    every: float

    def users_at(self, elapsed: float, total: int) -> int:
        return min(total, self.step * (1 + int(max(0.0, elapsed) // self.every)))

    def ramp_seconds(self, total: int) -> float:
        return self.every * max(0, math.ceil(total / self.step) - 1)


@dataclass
class LoadPlan:
    """Everything a Locust process needs to play its users' parts."""

    stage: str
    scenario: str
    endpoints: list[str]
    users: list[str]
    rate: float  # sends per second per user (bursts per second per group in `burst`)
    duration: float  # seconds of sending
    group_size: int = DEFAULT_GROUP_SIZE
    groups: dict[str, list[str]] = field(default_factory=dict)  # group id -> members
    user_group: dict[str, str] = field(default_factory=dict)  # user -> group id
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    shape: StepShape | None = None
    seed: int = 1
    body_bytes: int = 32
    token_ttl: float = 3600.0
    run_dir: str = ""

    # ---------------------------------------------------------------- json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadPlan:
        d = dict(d)
        d["churn"] = ChurnSpec(**d.get("churn") or {})
        d["shape"] = StepShape(**d["shape"]) if d.get("shape") else None
        return cls(**d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> LoadPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---------------------------------------------------------------- roles

    @property
    def n(self) -> int:
        return len(self.users)

    @property
    def uses_groups(self) -> bool:
        return self.scenario in GROUP_SCENARIOS

    def target(self, index: int) -> tuple[str | None, str | None]:
        """(to, group) for the sends of user `index`."""
        user = self.users[index]
        if self.uses_groups:
            return None, self.user_group[user]
        return self.users[dm_partner(index, self.n)], None

    def phase(self, index: int) -> float:
        """Offset of the user's schedule within one period; a burst group shares one."""
        if self.scenario == "burst":
            gid = self.user_group[self.users[index]]
            key = sorted(self.groups).index(gid)
        else:
            key = index
        return ((key * _GOLDEN) % 1.0) / self.rate

    def schedule(self, index: int, send_start: float) -> Schedule:
        return Schedule(send_start + self.phase(index), 1.0 / self.rate)

    def churns(self, index: int) -> bool:
        """Whether user `index` drops off now and then (an exact fraction of users)."""
        k = round(self.churn.fraction * self.n)
        order = list(range(self.n))
        random.Random(f"{self.seed}:churners").shuffle(order)
        return index in set(order[:k])

    def churn_clock(self, index: int) -> ChurnClock:
        return ChurnClock(self.churn, random.Random(f"{self.seed}:churn:{index}"))

    def body(self, index: int, k: int) -> str:
        head = f"{self.users[index]} #{k} "
        return head + "." * max(0, self.body_bytes - len(head))

    def offered_sends_per_s(self) -> float:
        return self.rate * self.n

    def expected_fanout(self) -> float:
        """Mean recipients per message (members minus the sender)."""
        if not self.uses_groups:
            return 1.0
        sizes = [len(m) for m in self.groups.values()]
        return sum(s * (s - 1) for s in sizes) / max(1, sum(sizes))


@dataclass
class Schedule:
    """Send times `base + k * period`, k = 0, 1, ...: open loop, never skipped for lag."""

    base: float
    period: float

    def slot_at_or_after(self, t: float) -> int:
        return max(0, math.ceil((t - self.base) / self.period - 1e-9))

    def time_of(self, k: int) -> float:
        return self.base + k * self.period

    def slots_between(self, k: int, end: float) -> int:
        """How many slots from slot `k` on fall before `end`."""
        return max(0, self.slot_at_or_after(end) - k)


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
