"""Faults: the fault windows of the run, from the manifest and from the history's `fault`
events (one entry per kind, target and start), in seconds since the run started too."""

from __future__ import annotations

from typing import Any, TypedDict

from reports.checks.base import Check, Result, figures
from reports.checks.index import Index, number


class Fault(TypedDict):
    """One fault window as metrics.json lists it."""

    kind: str | None
    target: str | None
    start: float | None
    end: float | None
    start_rel: float | None
    end_rel: float | None
    source: str


def faults(index: Index) -> Result:
    run, t0 = index.run, index.clock.t0

    def rel(x: float | None) -> float | None:
        return None if x is None else round(x - t0, 3)

    out: list[Fault] = []
    seen: set[tuple[Any, Any, Any]] = set()
    raw: list[tuple[dict[str, Any], str]] = [
        (f, "manifest") for f in run.manifest.get("faults") or [] if isinstance(f, dict)
    ]
    raw += [(dict(e), "history") for e in index.tally.fault_events]
    for f, source in raw:
        start = number(f.get("start"))
        if start is None and source == "history":
            start = number(f.get("t"))
        end = number(f.get("end"))
        kind = f.get("kind")
        target = f.get("target")
        ident = (kind, target, start)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(
            Fault(
                kind=None if kind is None else str(kind),
                target=None if target is None else str(target),
                start=start,
                end=end,
                start_rel=rel(start),
                end_rel=rel(end),
                source=source,
            )
        )
    out.sort(key=lambda f: (f["start"] is None, f["start"] or 0.0))
    return figures({"faults": out})


FAULTS = Check("faults", ("faults",), (), faults)
