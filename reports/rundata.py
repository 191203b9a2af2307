"""The report's view of one run folder: manifest, metrics.json (the checker makes it when
it is missing) and the push-latency sample the latency CDFs are drawn from.

metrics.json holds latency percentiles but not the whole distribution, so the sample
is recomputed from the histories with the checker's own classification of deliveries
(never a second implementation of it), and used only when its size matches the
push-delivery count in metrics.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reports import checker
from reports.history import MANIFEST, METRICS, load_manifest, load_run
from reports.numbers import Calc, Num, Text, number
from reports.stats import FloatArray

NO_FAULT = "no fault"
CAPACITY = "capacity.json"  # a capacity ladder's summary, beside its level run folders


def stage_key(stage: str) -> tuple[Any, ...]:
    """Sort key that puts v2 before v10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", stage))


@dataclass
class RunData:
    """One run as the report uses it; `rid` names it in the page and in number tags."""

    rid: str
    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    latencies_ms: FloatArray | None = None  # sorted push latencies; None: not available

    # ------------------------------------------------------------ identity

    @property
    def stage(self) -> str:
        return str(self.metrics["run"].get("stage") or self.manifest.get("stage") or "?")

    @property
    def scenario(self) -> str:
        return str(self.metrics["run"].get("scenario") or self.manifest.get("scenario") or "?")

    @property
    def kind(self) -> str:
        """`sim` or `real`; older simulated manifests say `source: sim` instead of `kind`."""
        kind = self.manifest.get("kind") or self.manifest.get("source")
        return "sim" if kind == "sim" else "real"

    @property
    def params(self) -> dict[str, Any]:
        p = self.metrics["run"].get("params")
        return p if isinstance(p, dict) else {}

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The fault windows; none where the faults check crashed (its section is a dict)."""
        faults = self.metrics.get("faults")
        return [f for f in faults if isinstance(f, dict)] if isinstance(faults, list) else []

    @property
    def fault_label(self) -> str:
        kinds: list[str] = []
        for f in self.faults:
            k = str(f.get("kind") or "fault")
            if k not in kinds:
                kinds.append(k)
        return "+".join(kinds) if kinds else NO_FAULT

    def windows(self) -> list[tuple[int, dict[str, Any]]]:
        """(index, fault) of the faults with a start time, in metrics.json order."""
        return [(i, f) for i, f in enumerate(self.faults) if f.get("start_rel") is not None]

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return (self.scenario, stage_key(self.stage), self.fault_label, self.kind, self.rid)

    # ------------------------------------------------------------ numbers

    def num(self, key: str) -> Num:
        return Num(self.rid, key, number(self.metrics, key))

    def value(self, key: str) -> float | None:
        v = number(self.metrics, key)
        return None if v is None else float(v)

    def offered(self) -> Num | Calc | None:
        """Offered load in sends/s: the params' own figure, else users × rate."""
        if number(self.metrics, "run.params.offered_sends_per_s") is not None:
            return self.num("run.params.offered_sends_per_s")
        users, rate = self.num("run.params.users"), self.num("run.params.rate")
        if users.value is None or rate.value is None:
            return None
        return Calc("product", (users, rate))

    def offered_value(self) -> float | None:
        o = self.offered()
        return None if o is None or o.value is None else float(o.value)

    def load_text(self) -> Text:
        """`16 users × 2/s`, or the offered rate alone, or nothing known."""
        users, rate = self.num("run.params.users"), self.num("run.params.rate")
        if users.value is not None and rate.value is not None:
            return [users, " users × ", rate, "/s"]
        offered = self.offered()
        return [offered, " sends/s"] if offered is not None else ["unknown load"]

    @property
    def load_key(self) -> tuple[float, float] | None:
        users, rate = self.value("run.params.users"), self.value("run.params.rate")
        return None if users is None or rate is None else (users, rate)

    def label(self) -> str:
        return f"{self.stage} {self.kind}"

    @property
    def generator_bound(self) -> bool:
        """Did the run's load generator, by its own verdict (manifest), set the limit?"""
        gen = self.manifest.get("load_generator")
        verdict = gen.get("verdict") if isinstance(gen, dict) else None
        return bool(isinstance(verdict, dict) and verdict.get("generator_limited"))


# ---------------------------------------------------------------- loading


def find_run_dirs(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(run folders, skipped folders) among `paths`.

    A folder given with a manifest or histories is a run. Any other folder is searched
    one level down (so `runs/` works), where only folders with a manifest count: one
    with histories alone is an unfinished run, skipped and reported. A capacity folder
    found there (with a capacity.json, `imlab capacity --stages`) counts with its levels.
    """
    out: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: not a folder")
        if (p / MANIFEST).exists() or _has_history(p):
            out.append(p)
            continue
        below = sorted(c for c in p.iterdir() if c.is_dir())
        ladders = [c for c in below if (c / CAPACITY).exists() and not (c / MANIFEST).exists()]
        for ladder in ladders:
            below.remove(ladder)
            below += sorted(c for c in ladder.iterdir() if c.is_dir())
        found = [c for c in below if (c / MANIFEST).exists()]
        if not found:
            raise FileNotFoundError(f"{p}: no run folder (with a manifest.json) here or below")
        out.extend(found)
        skipped.extend(c for c in below if c not in found and _has_history(c))
    return out, skipped


def _has_history(p: Path) -> bool:
    return any(p.glob("history*.jsonl"))


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json, checking the run first when it has none (or an older one)."""
    path = run_dir / METRICS
    if path.exists():
        metrics: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if metrics.get("checker", {}).get("version") == checker.CHECKER_VERSION:
            return metrics
    return checker.check(run_dir)


def push_latencies_ms(run_dir: Path) -> FloatArray:
    """Every push latency (intended send -> push receipt) the checker counts, sorted, in ms."""
    sample = checker.push_latencies(load_run(run_dir))
    return np.sort(np.asarray(sample, dtype=np.float64) * 1000.0)


def load_runs(paths: Sequence[Path]) -> tuple[list[RunData], list[Path]]:
    """Every run's data, sorted by scenario, stage, fault and kind (ids unique), and the
    folders skipped as unfinished runs."""
    run_dirs, skipped = find_run_dirs(paths)
    runs: list[RunData] = []
    seen: set[str] = set()
    for path in run_dirs:
        rid = path.name
        n = 1
        while rid in seen:
            n += 1
            rid = f"{path.name}-{n}"
        seen.add(rid)
        metrics = load_metrics(path)
        run = RunData(rid, path, load_manifest(path), metrics)
        count = number(metrics, "latency_ms.push.count")  # None: the latency check crashed
        if count:
            sample = push_latencies_ms(path)
            if sample.size == count:
                run.latencies_ms = sample
        runs.append(run)
    runs.sort(key=lambda r: r.sort_key)
    return runs, skipped
