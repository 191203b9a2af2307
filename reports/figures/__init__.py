"""The report's figures, each a PNG plus a caption generated from the numbers it shows.

Every figure function takes the loaded runs and the output folder and returns
`Figure`s (and `Note`s where the data for a figure is missing). Captions are
fragment lists (`reports.numbers`), so each number in them is traceable to a run's
metrics.json. One module per figure family; `common` holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from reports.figures import anomalies, arch, capacity, latency, simreal, throughput, timeline
from reports.figures.common import KEEP_UP, Figure, Item, Note, standard_load
from reports.rundata import RunData

__all__ = ["FIGURE_BUILDERS", "KEEP_UP", "Figure", "Item", "Note", "standard_load"]

FIGURE_BUILDERS: tuple[Callable[[Sequence[RunData], Path], list[Item]], ...] = (
    arch.architecture,
    latency.latency_cdfs,
    throughput.throughput,
    capacity.capacity,
    anomalies.anomalies,
    timeline.fault_timeseries,
    simreal.sim_vs_real,
)
