"""A real run's simulated twin for the e2e tests, and issue #14's tolerance for what a
fault costs: counts within 20 % or within 5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["near", "said", "twin_metrics"]


def twin_metrics(real_dir: Path, out: Path) -> dict[str, Any]:
    """metrics.json of the model given the real run's stage, load, faults and seed, on
    this machine's cores (`sim.calibrate.twin_options`)."""
    from sim.calibrate import twin_options
    from sim.run import run_sim

    return run_sim(twin_options(real_dir, run_dir=out)).metrics


def near(sim: float, real: float, rel: float = 0.20, absolute: float = 5.0) -> bool:
    return abs(sim - real) <= max(absolute, rel * abs(real))


def said(real: dict[str, Any], sim: dict[str, Any]) -> str:
    """The compared figures, real / model, for an assertion's message."""
    r, s = real, sim
    return (
        f"attempted {r['sends']['attempted']} / {s['sends']['attempted']}, acked ok "
        f"{r['sends']['acked_ok']} / {s['sends']['acked_ok']}, refused "
        f"{r['sends']['acked_error']} / {s['sends']['acked_error']}, lost "
        f"{r['deliveries']['lost']} / {s['deliveries']['lost']}, push p99 "
        f"{r['latency_ms']['push']['p99']:.0f} / {s['latency_ms']['push']['p99']:.0f} ms"
    )
