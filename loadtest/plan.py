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

from imlab.experiment.scenarios import (
    DEFAULT_GROUP_SIZE,
    GROUP_SCENARIOS,
    ChurnClock,
    ChurnSpec,
    churners,
    dm_partner,
    phase,
)


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
        return phase(key, self.rate)

    def schedule(self, index: int, send_start: float) -> Schedule:
        return Schedule(send_start + self.phase(index), 1.0 / self.rate)

    def churns(self, index: int) -> bool:
        """Whether user `index` drops off now and then (an exact fraction of users)."""
        return index in churners(self.seed, self.n, self.churn.fraction)

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
