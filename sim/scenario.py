"""The load scenarios of `imlab load`, laid out for the simulator: the same users, groups,
send schedules and churn as `loadtest.plan` makes for a real run with the same options.

User names, dm pairs, group membership, the scenario checks, the churn clocks, the
phases and the churners come from `imlab.experiment.scenarios`, the ground floor
both kinds of run share; here they are computed once for everybody (a real run's
`LoadPlan` asks per user).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from imlab.experiment.scenarios import (
    DEFAULT_GROUP_SIZE,
    GROUP_SCENARIOS,
    SCENARIOS,
    ChurnClock,
    ChurnSpec,
    PlanError,
    check_scenario,
    churners,
    dm_partner,
    group_indices,
    phase,
    user_names,
)

__all__ = [
    "SCENARIOS",
    "ChurnSpec",
    "Conversation",
    "PlanError",
    "SimScenario",
    "build_scenario",
    "schedule_phases",
]


@dataclass(frozen=True, slots=True)
class Conversation:
    """A dm pair or a group: its id (`dm:a:b` or `group:<gid>`) and member indices."""

    index: int
    conv_id: str
    members: tuple[int, ...]
    group_id: str | None = None


@dataclass
class SimScenario:
    """Who the users are, who talks to whom, and when each user sends."""

    scenario: str
    users: int
    rate: float
    duration: float
    group_size: int = DEFAULT_GROUP_SIZE
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    seed: int = 1
    names: list[str] = field(default_factory=list)
    convs: list[Conversation] = field(default_factory=list)
    send_conv: list[int] = field(default_factory=list)
    """the conversation each user's sends go to"""
    user_convs: list[list[int]] = field(default_factory=list)
    phases: list[float] = field(default_factory=list)
    churners: frozenset[int] = frozenset()
    origin: list[int] | None = None
    """a sample's users' indices in the whole population (`sim.sample`); None: everybody"""

    @property
    def uses_groups(self) -> bool:
        return self.scenario in GROUP_SCENARIOS

    def churn_clock(self, index: int) -> ChurnClock:
        """User `index`'s online/offline spells: the same draws as in a real run."""
        if self.origin is not None:
            index = self.origin[index]
        return ChurnClock(self.churn, random.Random(f"{self.seed}:churn:{index}"))

    def offered_sends_per_s(self) -> float:
        return self.rate * self.users

    def expected_fanout(self) -> float:
        if not self.uses_groups:
            return 1.0
        sizes = [len(c.members) for c in self.convs]
        return sum(s * (s - 1) for s in sizes) / max(1, sum(sizes))


def build_scenario(
    scenario: str,
    users: int,
    *,
    rate: float = 1.0,
    duration: float = 30.0,
    group_size: int = DEFAULT_GROUP_SIZE,
    churn: ChurnSpec | None = None,
    seed: int = 1,
    features: set[str] | None = None,
) -> SimScenario:
    """The scenario as `imlab load` would plan it; raises PlanError where it would."""
    if rate <= 0 or duration <= 0:
        raise PlanError("rate and duration must be positive")
    check_scenario(scenario, users, group_size, features)
    spec = churn or ChurnSpec(1.0 if scenario == "churn" else 0.0)
    sc = SimScenario(scenario, users, rate, duration, group_size, spec, seed)
    sc.names = user_names(users, "sim")
    sc.user_convs = [[] for _ in range(users)]
    sc.send_conv = [0] * users
    if sc.uses_groups:
        for k, idx in enumerate(group_indices(scenario, users, group_size)):
            gid = f"g{k + 1}"
            sc.convs.append(Conversation(k, f"group:{gid}", tuple(idx), gid))
            for u in idx:
                sc.user_convs[u].append(k)
                sc.send_conv[u] = k
    else:
        by_pair: dict[tuple[int, int], int] = {}
        for u in range(users):
            a, b = sorted((u, dm_partner(u, users)))
            k = by_pair.setdefault((a, b), len(sc.convs))
            if k == len(sc.convs):
                x, y = sorted((sc.names[a], sc.names[b]))
                sc.convs.append(Conversation(k, f"dm:{x}:{y}", (a, b)))
                sc.user_convs[a].append(k)
                sc.user_convs[b].append(k)
            sc.send_conv[u] = k
    sc.phases = schedule_phases(sc)
    sc.churners = churners(seed, users, spec.fraction)
    return sc


def schedule_phases(sc: SimScenario) -> list[float]:
    """`LoadPlan.phase` for every user: golden-ratio offsets within one period."""
    if sc.scenario == "burst":
        gids = [c.group_id or "" for c in sc.convs]
        rank = {gid: r for r, gid in enumerate(sorted(gids))}
        keys = [rank[gids[sc.send_conv[u]]] for u in range(sc.users)]
    else:
        keys = list(range(sc.users))
    return [phase(key, sc.rate) for key in keys]
