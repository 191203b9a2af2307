"""Why each stage's knee is where it is: the CPU budget of its capacity ladder.

Reads the level runs of `imlab capacity` (a `--stages` folder or one stage's), sorts
every sampled process into a kind (the stage's own servers by role; Redis, the Kafka
JVM, PostgreSQL by name; the load generator) and fits each kind's CPU against the
accepted message rate over the levels that held: the slope is the kind's marginal CPU
per message (µs/msg), the intercept its idle burn (% of a core). Their sums say how
many messages per second the machine's cores could carry at most,

    ceiling = (cores x 100 % - the idle burns) / (the sum of µs/msg, as %/(msg/s)),

and so does each kind alone on the cores it can use (a Python process, Redis or the
Node generator one core each; the JVM and PostgreSQL all of them). The lowest of
these ceilings is what the measured knee is set against. Prints a table per stage
and the machine; `--json` saves the figures.

    .venv/bin/python benchmarks/cpu_budget.py runs/capacity-node-dm [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SERVICE_NAMES = {"redis-server": "redis", "java": "kafka", "tansu": "kafka", "postgres": "postgres"}
GENERATOR = "generator"


def kinds_of_run(
    manifest: dict[str, Any], counts: dict[str, int] | None = None
) -> dict[str, float]:
    """% of a core per kind, averaged over the send window, for one level run; fills
    `counts` with how many processes of each kind ran."""
    role_of = {
        str(info["pid"]): name.rpartition("-")[0] or name
        for name, info in (manifest.get("cluster") or {}).get("processes", {}).items()
    }
    stage = manifest.get("stage_cpu") or {}
    names = stage.get("names") or {}
    out: dict[str, float] = {}
    for pid, pct in (stage.get("per_process_pct_mean") or {}).items():
        kind = role_of.get(pid) or SERVICE_NAMES.get(names.get(pid, ""), "other")
        out[kind] = out.get(kind, 0.0) + float(pct)
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + 1
    gen = (manifest.get("load_generator") or {}).get("cpu") or {}
    out[GENERATOR] = float(gen.get("total_pct_mean", 0.0))
    if counts is not None:
        counts[GENERATOR] = int(gen.get("processes", 1) or 1)
    return out


def cores_of(kind: str, processes: int, cores: float) -> float:
    """The cores a kind can use: one per single-threaded process; the JVM's threads
    and PostgreSQL's backends can spread over them all."""
    if kind in ("kafka", "postgres"):
        return cores
    return min(float(processes), cores)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x; (a, b). With one point: through it, a = 0."""
    n = len(xs)
    if n == 1:
        return 0.0, ys[0] / xs[0] if xs[0] else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def budget(ladder: Path, cores: float) -> dict[str, Any]:
    """The budget of one stage's ladder folder (capacity.json and its level runs)."""
    summary = json.loads((ladder / "capacity.json").read_text())
    threshold = float(summary["threshold_ms"])
    rows: list[tuple[float, dict[str, float]]] = []
    counts: dict[str, int] = {}
    for lv in summary["levels"]:
        held = lv["p99_ms"] is not None and lv["p99_ms"] < threshold and lv["lost"] == 0
        if not held or not lv.get("delivered_per_s"):
            continue
        manifest = json.loads((Path(lv["run_dir"]) / "manifest.json").read_text())
        rate = float(manifest["params"]["offered_sends_per_s"])
        seen: dict[str, int] = {}
        rows.append((rate, kinds_of_run(manifest, seen)))
        counts = {k: max(n, counts.get(k, 0)) for k, n in seen.items()}
    if not rows:
        return {"stage": summary["stage"], "error": "no level held"}
    kinds = sorted({k for _, r in rows for k in r})
    per_kind = {}
    for k in kinds:
        xs = [rate for rate, _ in rows]
        ys = [r.get(k, 0.0) for _, r in rows]
        idle, slope = fit(xs, ys)
        usable = cores_of(k, counts.get(k, 1), cores)
        own = (usable * 100.0 - idle) / slope if slope > 0 else None
        per_kind[k] = {
            "us_per_msg": round(slope / 100.0 * 1e6, 1),
            "idle_pct": round(idle, 1),
            "processes": counts.get(k, 1),
            "ceiling_msgs_per_s": round(own) if own else None,
        }
    idle = sum(max(0.0, v["idle_pct"]) for v in per_kind.values())
    cost = sum(max(0.0, v["us_per_msg"]) for v in per_kind.values())
    machine = (cores * 100.0 - idle) / (cost / 1e6 * 100.0) if cost > 0 else None
    limits = {k: v["ceiling_msgs_per_s"] for k, v in per_kind.items() if v["ceiling_msgs_per_s"]}
    if machine:
        limits["the machine"] = round(machine)
    limit_by = min(limits, key=lambda k: limits[k]) if limits else None
    ceiling = limits[limit_by] if limit_by else None
    knee = summary["knee"]
    return {
        "stage": summary["stage"],
        "scenario": summary["scenario"],
        "levels_fitted": [rate for rate, _ in rows],
        "kinds": per_kind,
        "idle_pct": round(idle, 1),
        "us_per_msg": round(cost, 1),
        "machine_ceiling_msgs_per_s": round(machine) if machine else None,
        "ceiling_msgs_per_s": round(ceiling) if ceiling else None,
        "limited_by": limit_by,
        "knee": knee.get("knee"),
        "knee_status": knee.get("status"),
        "knee_over_ceiling": round(knee["knee"] / ceiling, 2)
        if knee.get("knee") and ceiling
        else None,
    }


def table(b: dict[str, Any]) -> str:
    if "error" in b:
        return f"{b['stage']}: {b['error']}"
    lines = [
        f"{b['stage']} ({b['scenario']}), fitted on "
        + ", ".join(f"{r:g}" for r in b["levels_fitted"])
        + " msgs/s:",
        "| kind | processes | µs/msg | idle % of a core | its own ceiling, msgs/s |",
        "|---|--:|--:|--:|--:|",
    ]
    for k, v in sorted(b["kinds"].items(), key=lambda kv: -kv[1]["us_per_msg"]):
        own = v["ceiling_msgs_per_s"]
        lines.append(
            f"| {k} | {v['processes']} | {v['us_per_msg']:,.0f} | {v['idle_pct']:.0f} "
            f"| {'-' if own is None else f'{own:,}'} |"
        )
    lines.append(
        f"| **all** | | **{b['us_per_msg']:,.0f}** | **{b['idle_pct']:.0f}** "
        f"| **{b['machine_ceiling_msgs_per_s']:,}** (the machine) |"
    )
    lines.append(
        f"ceiling {b['ceiling_msgs_per_s']:,} msgs/s ({b['limited_by']}); knee {b['knee']} "
        f"({b['knee_status']}); knee / ceiling {b['knee_over_ceiling']}"
    )
    return "\n".join(lines)


def main() -> int:
    from imlab.cluster import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="an `imlab capacity` output folder")
    ap.add_argument("--cores", type=float, default=float(os.cpu_count() or 1))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ladders = (
        [args.folder]
        if (args.folder / "capacity.json").exists()
        else sorted(p.parent for p in args.folder.glob("*/capacity.json"))
    )
    if not ladders:
        print(f"no capacity.json in {args.folder} or its folders", file=sys.stderr)
        return 2
    budgets = [budget(ladder, args.cores) for ladder in ladders]
    for b in budgets:
        print(table(b) + "\n")
    mach = machine_info()
    print(f"cores {args.cores:g}; machine: {json.dumps(mach)}")
    if args.json:
        args.json.write_text(json.dumps({"budgets": budgets, "machine": mach}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
