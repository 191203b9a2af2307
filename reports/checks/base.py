"""What a check is and what it returns: figures by metrics.json section, the anomalies it
counted and its own verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reports.checks.index import Index

ANOMALY_KINDS = (
    "lost",
    "duplicated",
    "unexpected",
    "seq_backwards",
    "seq_reused",
    "order_disagreements",
    "fifo_violations",
)


@dataclass(frozen=True)
class Result:
    """One check's findings. `sections` maps a metrics.json section to the figures this
    check puts there; `anomalies` maps ANOMALY_KINDS it judges to a count (None: unknown)."""

    verdict: str
    why: str
    sections: dict[str, Any]
    anomalies: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # set when the check raised instead of finishing


@dataclass(frozen=True)
class Check:
    """A named check, the metrics.json sections it fills and the anomaly kinds it judges."""

    name: str
    sections: tuple[str, ...]
    anomaly_kinds: tuple[str, ...]
    run: Callable[[Index], Result]


def judged(sections: dict[str, Any], anomalies: dict[str, int], **extra: Any) -> Result:
    """The result of a check that counts anomalies: anomalous when any count is not zero."""
    found = {k: v for k, v in anomalies.items() if v}
    if found:
        why = ", ".join(f"{k} {v:,}" for k, v in found.items())
        return Result("anomalous", why, sections, dict(anomalies), **extra)
    why = ", ".join(f"{k} 0" for k in anomalies)
    return Result("clean", why, sections, dict(anomalies), **extra)


def figures(sections: dict[str, Any]) -> Result:
    """The result of a check that only measures: nothing in it can be wrong."""
    return Result("clean", "figures only", sections)


def ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def lookup(metrics: dict[str, Any], *path: str) -> Any:
    """The figure at `path` in metrics.json, or None where a crashed check left none."""
    value: Any = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value
