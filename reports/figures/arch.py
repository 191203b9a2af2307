"""Architecture diagrams: one per described stage, with its message path spelled out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reports.architecture import ARCHITECTURES
from reports.diagrams import draw
from reports.figures.common import Figure, Item, Note, slug, stage_names
from reports.numbers import Text, join
from reports.rundata import RunData


def architecture(runs: Sequence[RunData], out: Path) -> list[Item]:
    """One diagram per described stage, with its message path spelled out."""
    items: list[Item] = []
    for stage, arch in ARCHITECTURES.items():
        file = f"arch-{slug(stage)}.png"
        draw(arch, out / file)
        names = {n.id: n.label for n in arch.nodes}
        steps = [f"{names[e.src]} → {names[e.dst]}: {e.label}" for e in arch.path()]
        caption: Text = [
            f"{stage} (seed §{arch.seed_section} in docs/SEED.md). One message, step by step: ",
            "; ".join(steps),
            f". Hand-off to a member on another node: {arch.handoff}. ",
            f"The seed's open problem, which the runs measure: {arch.open_problem}.",
        ]
        items.append(Figure("architecture", f"{stage}: {arch.title}", file, caption))
    undescribed = [s for s in stage_names(runs) if s not in ARCHITECTURES]
    if undescribed:
        items.append(
            Note(
                "architecture",
                ["No architecture description for ", *join([[s] for s in undescribed]), "."],
            )
        )
    return items
