"""Where a stage saturates: the knee of a ladder of load levels (pure logic, no I/O).

A level passes when its push p99 is under the threshold and nothing was lost. The knee
is the highest offered rate that passes before the ladder is past it (`confirm` failing
levels in a row); a lone failing level between passing ones is called noisy, not the
knee. A level the load generator could not offer (generator-bound) says nothing about
the stage: the ladder ends there and the knee found so far is only a lower bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DEFAULT_THRESHOLD_MS = 100.0
CONFIRM = 2  # failing levels in a row that put the ladder past the knee

Status = Literal["knee", "no knee within range", "below range", "generator-bound"]


@dataclass(frozen=True)
class Level:
    """One rung of the ladder, as measured."""

    offered: float  # msgs/s offered
    p99_ms: float | None  # push p99; None when nothing was pushed
    lost: int
    generator_bound: bool = False
    delivered_per_s: float | None = None
    run_dir: str = ""
    why: tuple[str, ...] = ()  # the generator verdict's reasons, when bound

    def passes(self, threshold_ms: float) -> bool:
        return self.p99_ms is not None and self.p99_ms < threshold_ms and self.lost == 0


@dataclass
class Knee:
    status: Status
    knee: float | None  # msgs/s; a lower bound unless status == "knee"
    threshold_ms: float
    first_failing: float | None = None  # the lowest level that failed past the knee
    noisy: list[float] = field(default_factory=list)
    judged: int = 0  # levels the verdict rests on (the ladder beyond is ignored)

    def sentence(self) -> str:
        t = f"push p99 < {self.threshold_ms:g} ms and nothing lost"
        noisy = (
            f"; noisy level(s) ignored: {', '.join(f'{r:g}' for r in self.noisy)} msgs/s"
            if self.noisy
            else ""
        )
        if self.status == "knee":
            text = (
                f"knee at {self.knee:g} msgs/s ({t}); "
                f"from {self.first_failing:g} msgs/s on it fails"
            )
        elif self.status == "no knee within range":
            text = f"no knee within range: every level up to {self.knee:g} msgs/s kept {t}"
        elif self.status == "below range":
            text = f"below range: already the lowest level, {self.first_failing:g} msgs/s, fails"
        else:
            below = f"the stage held up to {self.knee:g} msgs/s" if self.knee else "no level held"
            text = (
                f"generator-bound at {self.first_failing:g} msgs/s: the load generator, "
                f"not the stage, was the limit; {below} ({t})"
            )
        return text + noisy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sentence": self.sentence()}


def past_knee(levels: list[Level], threshold_ms: float, confirm: int = CONFIRM) -> bool:
    """Should a ladder measured so far stop? (past the knee, or the generator gave out)"""
    if levels and levels[-1].generator_bound:
        return True
    tail = levels[-confirm:]
    return len(tail) == confirm and not any(lv.passes(threshold_ms) for lv in tail)


def find_knee(
    levels: list[Level], threshold_ms: float = DEFAULT_THRESHOLD_MS, confirm: int = CONFIRM
) -> Knee:
    """The knee of `levels` (in any order; judged from the lowest offered rate up)."""
    ladder = sorted(levels, key=lambda lv: lv.offered)
    best: float | None = None
    failing: list[float] = []  # the current run of failing levels
    noisy: list[float] = []
    for i, lv in enumerate(ladder):
        if lv.generator_bound:
            return Knee("generator-bound", best, threshold_ms, lv.offered, noisy, i + 1)
        if lv.passes(threshold_ms):
            if best is not None:
                noisy += failing
            best, failing = lv.offered, []
            continue
        failing.append(lv.offered)
        if len(failing) >= confirm:
            status: Status = "knee" if best is not None else "below range"
            return Knee(status, best, threshold_ms, failing[0], noisy, i + 1)
    if best is None:
        first = failing[0] if failing else None
        return Knee("below range", None, threshold_ms, first, noisy, len(ladder))
    if failing:  # the ladder ended on fewer failures than `confirm`: still a knee
        return Knee("knee", best, threshold_ms, failing[0], noisy, len(ladder))
    return Knee("no knee within range", best, threshold_ms, None, noisy, len(ladder))
