"""`imlab sim --sweep nodes=1..16`: each stage's knee against its number of processes.

For every stage and node count the sweep finds the knee, as `imlab capacity` defines it
on the real stages (`loadtest.knee`: the highest offered rate with push p99 under the
threshold and nothing lost), by simulating short levels: the rate doubles from a start
until a level fails, then bisects between the last passing and the first failing rate
until they are within `tolerance` of each other; `loadtest.knee.find_knee` judges the
levels so measured. A node count starts from the knee of the count before it (the
knee does not fall when processes are added).

Each level is a sampled run (`sim.sample`): a population of `users` = offered / 1
msgs/s per user (the load tool's default per-user rate), of which a fraction is
simulated message by message so that about `budget` messages are, the rest being
aggregate load on every process, Redis, the broker's CPU and (v5) PostgreSQL. Each
process is a FIFO server of its own (one core each: `sim.server.Node`), as are Redis,
the Kafka broker (`Params.kafka_record`) and PostgreSQL; the model has no shared
machine, so adding a process adds a core.

What saturated first is read at the first failing level: the busiest of the client-
facing processes (v2/v3 servers, v4/v5 gateways), the workers, Redis, the broker and
PostgreSQL, by their utilisation during the send window.

The dimensions: `nodes` (v3: servers; v4/v5: gateways and workers alike), `servers`
(v3), `gateways` and `workers` (v4/v5; the other role held at `hold`, by default the
largest count of the sweep, so it is not the limit). v2 has one server: its knee is
the flat reference line of every dimension; v1 (no groups) is left out.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from imlab.experiment.faults import parse_faults
from imlab.experiment.runfolder import new_run_dir
from loadtest.knee import DEFAULT_THRESHOLD_MS, Knee, Level, find_knee
from sim.params import Params, load_params
from sim.population import population_figures
from sim.run import SimOptions, build_model
from sim.stage import StageModel

__all__ = [
    "DIMENSIONS",
    "Point",
    "SweepOptions",
    "SweepSpec",
    "parse_sweep",
    "run_sweep",
    "sweep_sentence",
    "sweep_table",
]

DIMENSIONS = {
    "nodes": "v3 servers; v4/v5 gateways and workers alike",
    "servers": "v3 servers",
    "gateways": "v4/v5 gateways (workers held)",
    "workers": "v4/v5 workers (gateways held)",
}
APPLIES = {"nodes": {"v3", "v4", "v5"}, "servers": {"v3"}, "gateways": {"v4", "v5"},
           "workers": {"v4", "v5"}}  # fmt: skip
REFERENCE = "v2"
LABELS = {"front": "gateway CPU", "worker": "worker CPU", "redis": "Redis",
          "kafka": "Kafka", "postgres": "DB"}  # fmt: skip


@dataclass(frozen=True)
class SweepSpec:
    dim: str
    counts: tuple[int, ...]

    def text(self) -> str:
        return f"{self.dim}={','.join(map(str, self.counts))}"


def parse_sweep(text: str) -> SweepSpec:
    """`nodes=1..16` (every count), `nodes=1..16*2` (doubling: 1,2,4,8,16) or
    `gateways=1,2,4,8`."""
    dim, eq, spec = text.partition("=")
    dim = dim.strip()
    if not eq or dim not in DIMENSIONS:
        raise ValueError(
            f"--sweep takes DIM=COUNTS with DIM one of {', '.join(DIMENSIONS)}, not {text!r}"
        )
    counts: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if ".." in part:
                lo_s, _, rest = part.partition("..")
                hi_s, star, step_s = rest.partition("*")
                lo, hi = int(lo_s), int(hi_s)
                if star:
                    factor = int(step_s)
                    if factor < 2:
                        raise ValueError
                    n = lo
                    while n <= hi:
                        counts.append(n)
                        n *= factor
                    if counts[-1] != hi:
                        counts.append(hi)
                else:
                    counts += range(lo, hi + 1)
            elif part:
                counts.append(int(part))
    except ValueError:
        raise ValueError(f"cannot read the counts of --sweep {text!r}") from None
    out = tuple(sorted(set(counts)))
    if not out or out[0] < 1:
        raise ValueError(f"--sweep {text!r}: counts must be 1 or more")
    return SweepSpec(dim, out)


@dataclass
class SweepOptions:
    sweeps: list[SweepSpec]
    stages: tuple[str, ...] = ("v2", "v3", "v4", "v5")
    scenario: str = "group"
    group_size: int = 8
    per_user_rate: float = 1.0
    level_seconds: float = 4.0
    budget: int = 3000  # messages simulated end to end per level; the rest is aggregate
    start: float = 200.0  # msgs/s of the first level of the first count
    tolerance: float = 0.1  # bisect until the failing rate is within this of the passing
    max_rate: float = 200_000.0
    threshold_ms: float = DEFAULT_THRESHOLD_MS
    hold: int | None = None  # the held role's count in a gateways/workers sweep
    params: str | None = None
    seed: int = 1
    run_dir: Path | None = None
    runs_root: Path | None = None
    quiet: bool = False


@dataclass
class Measured:
    """One simulated level."""

    offered: float
    p99_ms: float | None
    lost: int
    accepted_per_s: float | None
    utilisation: dict[str, float]  # resource class -> busiest member's share of the window
    sample: float
    users: int
    wall_s: float

    def level(self) -> Level:
        return Level(self.offered, self.p99_ms, self.lost, delivered_per_s=self.accepted_per_s)

    def busiest(self) -> tuple[str, float]:
        name = max(self.utilisation, key=lambda k: self.utilisation[k])
        return name, self.utilisation[name]


@dataclass
class Point:
    """A stage at one node count: its knee and what saturated first."""

    stage: str
    dim: str
    count: int
    front: int
    workers: int
    knee: dict[str, Any]
    saturated: str | None  # resource class that was busiest at the first failing level
    utilisation: dict[str, float]  # at the first failing level
    levels: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def knee_rate(self) -> float | None:
        k = self.knee.get("knee")
        return None if k is None else float(k)


def topology(stage: str, dim: str, n: int, hold: int) -> tuple[int, int]:
    """(client-facing processes, workers) of `stage` at count `n` of dimension `dim`."""
    if stage == REFERENCE:
        return 1, 0
    if stage == "v3":
        return n, 0
    if dim == "nodes":
        return n, n
    if dim == "gateways":
        return n, hold
    return hold, n


def measure(
    stage: str, front: int, workers: int, offered: float, o: SweepOptions, params: Params
) -> Measured:
    """Simulate one level and read its push p99, losses and utilisations."""
    users = max(o.group_size * 8, round(offered / o.per_user_rate / o.group_size) * o.group_size)
    rate = offered / users
    sample = min(1.0, o.budget / (offered * o.level_seconds))
    opts = SimOptions(
        stage=stage,
        scenario=o.scenario,
        users=users,
        rate=rate,
        duration=o.level_seconds,
        group_size=o.group_size,
        seed=o.seed,
        servers=front if stage == "v3" else None,
        gateways=front if stage in ("v4", "v5") else None,
        workers=workers or None,
        sample=sample if sample < 1.0 else None,
        trace="0",
        max_drain=5.0,
        settle=0.5,
        quiet=True,
    )
    began = time.perf_counter()
    model, _sc, _traced = build_model(opts, params, parse_faults(""), None)
    window = _Window(model)
    model.run(progress=window)
    pop = population_figures(model)
    wall = time.perf_counter() - began
    return Measured(
        offered=offered,
        p99_ms=pop["latency_ms"]["push"]["p99"],
        lost=int(pop["deliveries"]["lost"]),
        accepted_per_s=pop["throughput"]["accepted_sends_per_s"] * model.scale
        if pop["throughput"]["accepted_sends_per_s"] is not None
        else None,
        utilisation=window.utilisation(),
        sample=sample,
        users=users,
        wall_s=round(wall, 3),
    )


class _Window:
    """The busy time of every process and service over the send window (progress hook:
    the model calls it after each simulated second of the window)."""

    def __init__(self, model: StageModel) -> None:
        self.m = model
        self.first: tuple[float, dict[str, float]] | None = None
        self.last: tuple[float, dict[str, float]] | None = None

    def _busy(self) -> dict[str, float]:
        m = self.m
        out = {f"front/{n.name}": n.cpu.busy for n in m.nodes}
        out |= {f"worker/{n.name}": n.cpu.busy for n in m.workers}
        out |= {name: s.busy for name, s in m.services().items()}
        return out

    def __call__(self, model: StageModel) -> None:
        now = model.env.now
        if not model.send_start <= now <= model.send_end:
            return
        if self.first is None:
            self.first = (now, self._busy())
        elif self.last is None or self.last[0] < now:
            self.last = (now, self._busy())

    def utilisation(self) -> dict[str, float]:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return {}
        (t0, b0), (t1, b1) = self.first, self.last
        out: dict[str, float] = {}
        for key, busy in b1.items():
            cls = key.split("/", 1)[0]
            u = (busy - b0.get(key, 0.0)) / (t1 - t0)
            out[cls] = round(max(out.get(cls, 0.0), u), 4)
        return out


def find_point(
    stage: str,
    front: int,
    workers: int,
    o: SweepOptions,
    params: Params,
    start: float,
    say: Callable[[str], None],
) -> tuple[Knee, list[Measured]]:
    """Double from `start` until a level fails, then bisect to `tolerance`."""
    levels: list[Measured] = []

    def run(rate: float) -> Measured:
        lv = measure(stage, front, workers, rate, o, params)
        levels.append(lv)
        ok = lv.level().passes(o.threshold_ms)
        busy, u = lv.busiest() if lv.utilisation else ("?", 0.0)
        p99 = "-" if lv.p99_ms is None else f"{lv.p99_ms:,.1f} ms"
        say(
            f"    {rate:>9,.0f} msgs/s: push p99 {p99}, lost {lv.lost:,} -> "
            f"{'pass' if ok else 'FAIL'}  (busiest {label(busy, stage)} {u:.0%}; "
            f"sample {lv.sample:.3g} of {lv.users:,} users; {lv.wall_s:.1f}s wall)"
        )
        return lv

    lo: float | None = None
    hi: float | None = None
    rate = start
    while rate <= o.max_rate:
        if run(rate).level().passes(o.threshold_ms):
            lo = rate
            rate *= 2.0
        else:
            hi = rate
            break
    if lo is None and hi is not None:  # the first level failed: go down instead
        rate = hi / 2.0
        while rate >= 1.0:
            if run(rate).level().passes(o.threshold_ms):
                lo = rate
                break
            hi = rate
            rate /= 2.0
    while lo is not None and hi is not None and hi / lo > 1.0 + o.tolerance:
        mid = math.sqrt(lo * hi)
        mid = float(round(mid, -1 if mid >= 100 else 0))
        if mid <= lo or mid >= hi:
            break
        if run(mid).level().passes(o.threshold_ms):
            lo = mid
        else:
            hi = mid
    return find_knee([lv.level() for lv in levels], o.threshold_ms), levels


def _resolve(o: SweepOptions, spec: SweepSpec) -> list[str]:
    return [s for s in o.stages if s == REFERENCE or s in APPLIES[spec.dim]]


def run_sweep(o: SweepOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Run every sweep; write sweep.json, sweep.md and sweep.png into the run folder."""
    out = out or sys.stdout

    def say(text: str) -> None:
        if not o.quiet:
            print(text, file=out, flush=True)

    run_dir = o.run_dir or new_run_dir("sweep", "-".join(s.dim for s in o.sweeps), o.runs_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    points: list[Point] = []
    reference: Point | None = None
    todo = [(spec, stage) for spec in o.sweeps for stage in _resolve(o, spec)]
    todo_points = sum(1 if st == REFERENCE else len(sp.counts) for sp, st in todo)
    done_points = 0
    say(
        f"sweep: {', '.join(s.text() for s in o.sweeps)}; stages {', '.join(o.stages)}; "
        f"{o.scenario} scenario, {o.level_seconds:g} s levels, ~{o.budget:,} messages "
        f"simulated per level (the rest aggregate); knee = push p99 < "
        f"{o.threshold_ms:g} ms and nothing lost; into {run_dir}"
    )
    for spec, stage in todo:
        hold = o.hold or max(spec.counts)
        counts = (1,) if stage == REFERENCE else spec.counts
        if stage == REFERENCE and reference is not None:
            continue
        start = o.start
        for n in counts:
            front, workers = topology(stage, spec.dim, n, hold)
            t0 = time.perf_counter()
            done_points += 1
            say(
                f"[{done_points}/{todo_points} | {time.perf_counter() - began:6.1f}s] {stage} "
                f"{_topology_text(stage, front, workers)}"
            )
            params = load_params(o.params, stage)
            knee, levels = find_point(stage, front, workers, o, params, start, say)
            first_fail = next(
                (lv for lv in sorted(levels, key=lambda x: x.offered)
                 if knee.first_failing is not None and lv.offered == knee.first_failing),
                None,
            )  # fmt: skip
            util = first_fail.utilisation if first_fail else {}
            saturated = max(util, key=lambda k: util[k]) if util else None
            point = Point(
                stage=stage,
                dim="reference" if stage == REFERENCE else spec.dim,
                count=n,
                front=front,
                workers=workers,
                knee=knee.to_dict(),
                saturated=saturated,
                utilisation=util,
                levels=[asdict(lv) for lv in levels],
                wall_s=round(time.perf_counter() - t0, 2),
            )
            say(
                f"    => {knee.sentence()}"
                + (f"; saturated first: {label(saturated, stage)}" if saturated else "")
            )
            points.append(point)
            if stage == REFERENCE:
                reference = point
            if knee.knee:
                start = knee.knee
    wall = time.perf_counter() - began
    result: dict[str, Any] = {
        "kind": "sim-sweep",
        "sweeps": [s.text() for s in o.sweeps],
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(o).items()
            if k not in ("sweeps", "run_dir", "runs_root")
        },
        "params_from": o.params or "each stage's calibrated defaults (sim/calibration/)",
        "kafka_record_us": params.kafka_record.mean * 1e6,
        "points": [asdict(p) for p in points],
        "wall_seconds": round(wall, 1),
    }
    result["sentences"] = sweep_sentence(result)
    (run_dir / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    from reports.figures.scaleout import scaleout_figure

    scaleout_figure(result, run_dir / "sweep.png")
    md = sweep_markdown(result)
    (run_dir / "sweep.md").write_text(md)
    say("\n" + md + f"\nrun folder: {run_dir}")
    result["run_dir"] = str(run_dir)
    return result


def label(resource: str | None, stage: str) -> str:
    """How the table names a resource class: v2's and v3's front processes are servers."""
    if resource == "front" and stage in ("v1", "v2", "v3"):
        return "server CPU"
    return LABELS.get(resource or "", resource or "-")


def _topology_text(stage: str, front: int, workers: int) -> str:
    if stage in ("v4", "v5"):
        return f"{front} gateway(s), {workers} worker(s)"
    return f"{front} server(s)"


def _knee(p: dict[str, Any]) -> float | None:
    k = p["knee"].get("knee")
    return None if k is None else float(k)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def sweep_table(result: dict[str, Any]) -> str:
    """The markdown table: stage, nodes, knee, what saturated first."""
    lines = [
        "| stage | sweep | gateways/servers | workers | knee msgs/s | saturated first | "
        "utilisation at the first failing level |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for p in result["points"]:
        util = ", ".join(
            f"{label(k, p['stage'])} {v:.0%}"
            for k, v in sorted(p["utilisation"].items(), key=lambda kv: -kv[1])
        )
        status = p["knee"]["status"]
        knee = _fmt(_knee(p)) + ("" if status == "knee" else f" ({status})")
        lines.append(
            f"| {p['stage']} | {p['dim']} | {p['front']} | {p['workers'] or '-'} | {knee} | "
            f"{label(p['saturated'], p['stage'])} | {util} |"
        )
    return "\n".join(lines)


def sweep_sentence(result: dict[str, Any]) -> list[str]:
    """The statements the figure supports, computed from the points."""
    pts = result["points"]
    ref = next((p for p in pts if p["stage"] == REFERENCE), None)
    ref_knee = _knee(ref) if ref else None
    out: list[str] = []
    if ref_knee:
        out.append(
            f"v2 (one server) keeps up to {ref_knee:,.0f} msgs/s, saturating its "
            f"{label(ref['saturated'], REFERENCE) if ref else '?'}."
        )
    dims: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in pts:
        if p["stage"] != REFERENCE:
            dims.setdefault(p["dim"], {}).setdefault(p["stage"], []).append(p)
    for dim, by_stage in dims.items():
        for stage, series in by_stage.items():
            series = sorted(series, key=lambda p: p["count"])
            what = {"nodes": "nodes" if stage != "v3" else "servers", "servers": "servers",
                    "gateways": "gateways", "workers": "workers"}[dim]  # fmt: skip
            held = ""
            if dim in ("gateways", "workers") and series:
                other = "workers" if dim == "gateways" else "gateways"
                n_other = series[0]["workers"] if dim == "gateways" else series[0]["front"]
                held = f" ({other} held at {n_other})"
            knees = [(p["count"], _knee(p)) for p in series]
            valid = [(n, k) for n, k in knees if k]
            if not valid:
                out.append(f"{stage} over {what}{held}: no knee found.")
                continue
            text = (
                f"{stage} over {what}{held}: the knee goes from {valid[0][1]:,.0f} msgs/s at "
                f"{valid[0][0]} to {valid[-1][1]:,.0f} at {valid[-1][0]}"
            )
            if ref_knee and stage != REFERENCE:
                over = next((n for n, k in valid if k > ref_knee), None)
                if over is None:
                    last_n = series[-1]["count"]
                    text += f"; it never overtakes v2 ({ref_knee:,.0f}) within {last_n} {what}"
                elif over == valid[0][0] and over == series[0]["count"]:
                    text += f"; it is above v2 ({ref_knee:,.0f}) from {over} {what} on"
                else:
                    text += f"; {stage} overtakes v2 at {over} {what}"
            shared = [p for p in series if p["saturated"] in ("redis", "kafka", "postgres")]
            if shared:
                first = shared[0]
                text += (
                    f"; from {first['count']} {what} on, {LABELS[first['saturated']]} "
                    f"saturates first, at {_fmt(_knee(first))} msgs/s"
                )
                tail = [_knee(p) for p in series if p["count"] >= first["count"]]
                tail_ok = [k for k in tail if k]
                if len(tail_ok) > 1 and max(tail_ok) <= 1.25 * min(tail_ok):
                    text += " (the curve is flat past it)"
            else:
                last = series[-1]
                text += (
                    f"; at {last['count']} {what} its "
                    f"{label(last['saturated'], stage)} still "
                    "saturates first"
                )
            out.append(text + ".")
    if {"gateways", "workers"} <= set(dims):
        for stage in sorted(set(dims["gateways"]) & set(dims["workers"])):
            g = [p for p in dims["gateways"][stage]]
            w = [p for p in dims["workers"][stage]]
            gs = {p["saturated"] for p in g}
            ws = {p["saturated"] for p in w}
            out.append(
                f"{stage}'s gateways and workers scale separately: over the gateways sweep "
                f"the first to saturate is {_names(gs, stage)}; over the workers sweep "
                f"{_names(ws, stage)}."
            )
    return out


def _names(resources: set[str | None], stage: str) -> str:
    return " or ".join(sorted(label(r, stage) for r in resources))


def sweep_markdown(result: dict[str, Any]) -> str:
    o = result["options"]
    return (
        f"# Scale-out: knee against node count ({', '.join(result['sweeps'])})\n\n"
        f"Simulated (`imlab sim --sweep`), {o['scenario']} scenario (groups of "
        f"{o['group_size']}), each level {o['level_seconds']:g} s with ~{o['budget']:,} "
        f"messages end to end and the rest of the population as aggregate load; knee = "
        f"highest offered rate with push p99 < {o['threshold_ms']:g} ms and nothing lost "
        f"(`loadtest.knee`), bisected to {o['tolerance']:.0%}. Every process, Redis, the "
        f"Kafka broker ({result['kafka_record_us']:.0f} µs of CPU per record) and PostgreSQL "
        f"have a core of their own. Parameters: {result['params_from']}. Wall time "
        f"{result['wall_seconds']:,.0f} s.\n\n"
        + "\n".join(f"- {s}" for s in result["sentences"])
        + "\n\n"
        + sweep_table(result)
        + "\n\n![knee against node count](sweep.png)\n"
    )
