"""Why each stage's knee is where it is: the CPU budget of its capacity ladder.

Reads the level runs of `imlab capacity` (a `--stages` folder or one stage's), sorts
every sampled process into a kind (the stage's own servers by role; Redis, the Kafka
JVM, PostgreSQL by name; the load generator) and fits each kind's CPU against the
accepted message rate over the levels that held: the slope is the kind's marginal CPU
per message (µs/msg), the intercept its idle burn (% of a core). Their sums say how
many messages per second the machine's cores could carry at most,

    ceiling = (cores x 100 % - the idle burns) / (the sum of µs/msg, as %/(msg/s)),

which the measured knee is set against. Prints a table per stage and the machine;
`--json` saves the figures.

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


def kinds_of_run(manifest: dict[str, Any]) -> dict[str, float]:
    """% of a core per kind, averaged over the send window, for one level run."""
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
    gen = (manifest.get("load_generator") or {}).get("cpu") or {}
    out[GENERATOR] = float(gen.get("total_pct_mean", 0.0))
    return out


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
    for lv in summary["levels"]:
        held = lv["p99_ms"] is not None and lv["p99_ms"] < threshold and lv["lost"] == 0
        if not held or not lv.get("delivered_per_s"):
            continue
        manifest = json.loads((Path(lv["run_dir"]) / "manifest.json").read_text())
        rate = float(manifest["params"]["offered_sends_per_s"])
        rows.append((rate, kinds_of_run(manifest)))
    if not rows:
        return {"stage": summary["stage"], "error": "no level held"}
    kinds = sorted({k for _, r in rows for k in r})
    per_kind = {}
    for k in kinds:
        xs = [rate for rate, _ in rows]
        ys = [r.get(k, 0.0) for _, r in rows]
        idle, slope = fit(xs, ys)
        per_kind[k] = {"us_per_msg": round(slope / 100.0 * 1e6, 1), "idle_pct": round(idle, 1)}
    idle = sum(max(0.0, v["idle_pct"]) for v in per_kind.values())
    cost = sum(max(0.0, v["us_per_msg"]) for v in per_kind.values())
    ceiling = (cores * 100.0 - idle) / (cost / 1e6 * 100.0) if cost > 0 else None
    knee = summary["knee"]
    return {
        "stage": summary["stage"],
        "scenario": summary["scenario"],
        "levels_fitted": [rate for rate, _ in rows],
        "kinds": per_kind,
        "idle_pct": round(idle, 1),
        "us_per_msg": round(cost, 1),
        "ceiling_msgs_per_s": round(ceiling) if ceiling else None,
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
        "| kind | µs/msg | idle % of a core |",
        "|---|--:|--:|",
    ]
    for k, v in sorted(b["kinds"].items(), key=lambda kv: -kv[1]["us_per_msg"]):
        lines.append(f"| {k} | {v['us_per_msg']:,.0f} | {v['idle_pct']:.0f} |")
    lines.append(f"| **all** | **{b['us_per_msg']:,.0f}** | **{b['idle_pct']:.0f}** |")
    lines.append(
        f"ceiling on these cores {b['ceiling_msgs_per_s']:,} msgs/s; knee {b['knee']} "
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
