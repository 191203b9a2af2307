"""The baseline: every stage that exists, through the `dm`, `group` and `burst` scenarios
at three load levels, repeated, under the same load in one sitting; the median of the
repeats goes into docs/RESULTS.md with the machine, stage ratios against v2, and where
the load generator rather than the server was the limit (docs/PROTOCOL.md section 8).

    .venv/bin/python benchmarks/baseline.py            # the full run (about 20 min here)
    .venv/bin/python benchmarks/baseline.py --quick    # a smoke run; writes no RESULTS.md

Stages are interleaved within each repeat, so slow drift of the shared machine hits
every stage alike. A stage that lacks a scenario's feature (v1 has no groups) is
shown as n/a.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab.cluster import machine_info, package_versions
from imlab.experiment.scenarios import PlanError
from imlab.services import install_signal_handlers
from imlab.stages import names as stage_names
from loadtest.runner import LoadOptions, run_load

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
RESULTS_JSON = ROOT / "benchmarks" / "baseline-results.json"
BEGIN = "<!-- baseline:begin (written by benchmarks/baseline.py; edit outside these marks) -->"
END = "<!-- baseline:end -->"


@dataclass(frozen=True)
class Level:
    name: str
    users: int
    rate: float  # sends per second per user


# Offered load per scenario: low, medium, and near what one v2 server takes here.
LEVELS: dict[str, list[Level]] = {
    "dm": [Level("L1", 50, 2.0), Level("L2", 100, 5.0), Level("L3", 200, 5.0)],
    "group": [Level("L1", 48, 1.0), Level("L2", 96, 2.0), Level("L3", 192, 2.0)],
    "burst": [Level("L1", 48, 1.0), Level("L2", 96, 2.0), Level("L3", 192, 2.0)],
}
# The seed's v1 weakness under the same churn on every stage: dm pairs whose users
# drop (half of the drops silent) and come back; one run per stage and repeat.
CHURN_LEVEL = Level("C", 20, 5.0)
CHURN_KW = {"churn_online": 1.0, "churn_offline": 0.5}
QUICK_LEVELS: dict[str, list[Level]] = {
    "dm": [Level("L1", 8, 2.0), Level("L2", 16, 2.0), Level("L3", 24, 2.0)],
    "group": [Level("L1", 8, 1.0), Level("L2", 16, 1.0), Level("L3", 24, 1.0)],
    "burst": [Level("L1", 8, 1.0), Level("L2", 16, 1.0), Level("L3", 24, 1.0)],
}
FLAGS = (
    ("**G**", "generator_limited"),
    ("*m*", "machine_busy"),
    ("*o*", "others_busy"),
    ("*b*", "behind_schedule"),
)
FIGURES = (
    "accepted_sends_per_s",
    "deliveries_per_s",
    "push_p50_ms",
    "push_p99_ms",
    "lost",
    "expected",
    "lag_p99_ms",
    "generator_cpu_pct",
    "stage_cpu_pct",
    "other_cpu_pct",
    "acked_ok",
    "refused",
    "push",
    "sync",
)


def existing_stages() -> list[str]:
    """Stages whose entry point exists in this tree (a server, or v4's gateway)."""
    out = []
    for stage in stage_names():
        for module in (f"versions.{stage}.server", f"versions.{stage}.gateway"):
            try:
                if importlib.util.find_spec(module) is not None:
                    out.append(stage)
                    break
            except ImportError:
                continue
    return out


def one_run(
    stage: str, scenario: str, level: Level, duration: float, root: Path, tag: str
) -> dict[str, Any]:
    opts = LoadOptions(
        stage=stage,
        scenario=scenario,
        users=level.users,
        rate=level.rate,
        duration=duration,
        run_dir=root / f"{tag}-{stage}-{scenario}-{level.name}",
        settle=1.0,
        quiet=True,
    )
    if scenario == "churn":
        opts.churn_online = CHURN_KW["churn_online"]
        opts.churn_offline = CHURN_KW["churn_offline"]
    try:
        result = run_load(opts)
    except PlanError as exc:
        return {"status": "n/a", "why": str(exc)}
    except Exception as exc:  # one failed run must not end the benchmark
        return {"status": "failed", "why": f"{type(exc).__name__}: {exc}"}
    m, man = result.metrics, result.manifest
    gen = man["load_generator"]
    return {
        "status": "ok",
        "run_dir": str(result.run_dir),
        "accepted_sends_per_s": m["throughput"]["accepted_sends_per_s"],
        "deliveries_per_s": m["throughput"]["deliveries_per_s"],
        "push_p50_ms": m["latency_ms"]["push"]["p50"],
        "push_p99_ms": m["latency_ms"]["push"]["p99"],
        "lost": m["deliveries"]["lost"],
        "expected": m["deliveries"]["expected"],
        "acked_ok": m["sends"]["acked_ok"],
        "refused": m["sends"]["acked_error"],
        "push": m["deliveries"]["push"],
        "sync": m["deliveries"]["sync"],
        "anomalies": m["anomalies"],
        "lag_p99_ms": gen["lag"].get("p99_ms"),
        "generator_cpu_pct": (gen["cpu"] or {}).get("total_pct_mean"),
        "stage_cpu_pct": (man["stage_cpu"] or {}).get("total_pct_mean"),
        "machine_cpu_pct": (man["machine_cpu"] or {}).get("mean"),
        "other_cpu_pct": man.get("other_processes_cpu_pct"),
        "generator_limited": gen["verdict"]["generator_limited"],
        "verdict": gen["verdict"],
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return {"status": runs[0]["status"] if runs else "none", "why": runs[0].get("why", "")}
    out: dict[str, Any] = {"status": "ok", "repeats": len(ok), "failed": len(runs) - len(ok)}
    for key in FIGURES:
        values = [float(r[key]) for r in ok if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["generator_limited"] = sum(bool(r["generator_limited"]) for r in ok)
    out["machine_busy"] = sum(
        any("machine's cores" in n for n in r["verdict"]["notes"]) for r in ok
    )
    out["behind_schedule"] = sum(bool(r["verdict"]["behind_schedule"]) for r in ok)
    out["others_busy"] = sum(
        any("outside this run" in n for n in r["verdict"]["notes"]) for r in ok
    )
    return out


# ---------------------------------------------------------------- the table


def _num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cells: dict[str, dict[str, Any]] = results["median"]
    stages: list[str] = meta["stages"]
    lines = [
        BEGIN,
        "## Baseline: stages side by side (benchmarks/baseline.py)",
        "",
        f"Measured {meta['date']} on `{meta['machine']['platform']}`, "
        f"{meta['machine']['cpu_count']} cores, Python {meta['machine']['python']}; "
        f"locust {meta['versions'].get('locust')}, python-socketio "
        f"{meta['versions'].get('python-socketio')}. Load generator and stage share the "
        "machine. "
        f"{meta['repeats']} repeat(s) of {meta['duration']:g} s of sending per cell, "
        f"stages interleaved within each repeat; each figure is the median of the repeats. "
        f"The whole benchmark took {meta['elapsed_s'] / 60:.1f} min, at commit "
        f"{meta.get('commit', 'unknown')}.",
        "",
        "Load levels (users x sends/s per user; groups of 8, so a group send has 7 "
        "recipients; `burst`: all 8 members of a group send at the same instant):",
        "",
    ]
    for scenario, levels in meta["levels"].items():
        desc = ", ".join(f"{lv['name']} {lv['users']} x {lv['rate']:g}/s" for lv in levels)
        lines.append(f"- `{scenario}`: {desc}")
    lines += [
        "",
        "Columns: accepted sends/s and deliveries/s over the send window; push latency "
        "from the *intended* send time (open loop, no coordinated omission); lost = "
        "acked-ok deliveries never seen after drain and final sync (of expected); "
        "gen = Locust's CPU (sum of its processes, % of one core); ratios divide the "
        "stage's figure by v2's at the same cell. Flags: **G** the load generator was "
        "the limit in some repeat, *m* the machine's cores were over 80% busy, "
        "*o* processes outside the run (other work on the shared machine) used over 25% "
        "of a core, *b* sends fell behind schedule (p99 lag > 100 ms).",
        "",
        "| scenario | level | stage | sends/s | deliveries/s | p50 ms | p99 ms "
        "| lost / expected | gen % | stage % | p99 / v2 | deliv/s / v2 | flags |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for scenario, levels in meta["levels"].items():
        for lv in levels:
            base = cells.get(f"v2/{scenario}/{lv['name']}", {})
            for stage in stages:
                c = cells.get(f"{stage}/{scenario}/{lv['name']}", {})
                if c.get("status") != "ok":
                    why = (
                        "n/a (no groups in v1)"
                        if c.get("status") == "n/a"
                        else c.get("status", "-")
                    )
                    lines.append(
                        f"| {scenario} | {lv['name']} | {stage} | {why} | | | | | | | | | |"
                    )
                    continue
                flags = " ".join(mark for mark, key in FLAGS if c.get(key))
                lost = f"{_num(c['lost'])} / {_num(c['expected'])}"
                lines.append(
                    f"| {scenario} | {lv['name']} | {stage} | {_num(c['accepted_sends_per_s'])} "
                    f"| {_num(c['deliveries_per_s'])} | {_num(c['push_p50_ms'], 1)} "
                    f"| {_num(c['push_p99_ms'], 1)} | {lost} | {_num(c['generator_cpu_pct'])} "
                    f"| {_num(c['stage_cpu_pct'])} "
                    f"| {_ratio(c['push_p99_ms'], base.get('push_p99_ms'))} "
                    f"| {_ratio(c['deliveries_per_s'], base.get('deliveries_per_s'))} "
                    f"| {flags} |"
                )
    if meta.get("churn"):
        lines += ["", *churn_table(results)]
    lines += ["", *results.get("findings", []), "", END]
    return "\n".join(lines) + "\n"


def churn_table(results: dict[str, Any]) -> list[str]:
    """Loss under churn: what each stage does with messages to users who drop off."""
    meta = results["meta"]
    c = meta["churn"]
    lv = c["level"]
    lines = [
        "### Loss under churn (`churn` scenario)",
        "",
        f"{lv['users']} users in dm pairs, {lv['rate']:g} sends/s each; every user drops "
        f"off after an exponential online spell (mean {c['churn_online']:g} s) for an "
        f"offline spell (mean {c['churn_offline']:g} s); half of the drops are silent (the "
        "network dies, the server is not told and keeps pushing into the dead connection), "
        "half are clean disconnects. Refused = error acks (v1: `recipient_offline`). "
        f"{c.get('repeats', 1)} run(s) per stage (median).",
        "",
        "| stage | acked ok | refused | deliveries expected | by push | recovered by sync "
        "| lost | lost % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for stage in meta["stages"]:
        cell = results["median"].get(f"{stage}/churn/{lv['name']}", {})
        if cell.get("status") != "ok":
            lines.append(f"| {stage} | {cell.get('status', '-')} | | | | | | |")
            continue
        pct = 100.0 * cell["lost"] / cell["expected"] if cell["expected"] else 0.0
        lines.append(
            f"| {stage} | {_num(cell['acked_ok'])} | {_num(cell['refused'])} "
            f"| {_num(cell['expected'])} | {_num(cell['push'])} | {_num(cell['sync'])} "
            f"| {_num(cell['lost'])} | {pct:.1f} |"
        )
    return lines


def findings(results: dict[str, Any]) -> list[str]:
    """Plain sentences on what the table shows: saturation, loss, generator limits."""
    cells: dict[str, dict[str, Any]] = results["median"]
    out = ["### What the table says", ""]
    limited = [k for k, c in cells.items() if c.get("status") == "ok" and c["generator_limited"]]
    busy = [k for k, c in cells.items() if c.get("status") == "ok" and c["machine_busy"]]
    for scenario, levels in results["meta"]["levels"].items():
        lo, hi = levels[0]["name"], levels[-1]["name"]
        a, b = cells.get(f"v2/{scenario}/{lo}", {}), cells.get(f"v2/{scenario}/{hi}", {})
        if a.get("status") == "ok" and b.get("status") == "ok":
            out.append(
                f"- v2 `{scenario}`: from {lo} to {hi} the offered load grows "
                f"{b['accepted_sends_per_s'] / max(a['accepted_sends_per_s'], 1e-9):.1f}x and "
                f"push p99 goes from {_num(a['push_p99_ms'], 1)} ms to "
                f"{_num(b['push_p99_ms'], 1)} ms."
            )
    lost = [
        k for k, c in cells.items() if c.get("status") == "ok" and c["lost"] and "/churn/" not in k
    ]
    out.append(
        "- Lost deliveries: "
        + (", ".join(f"{k} ({_num(cells[k]['lost'])})" for k in lost) if lost else "none")
        + " in the main table (no churn, no faults; the churn table shows each stage's loss)."
    )
    for scenario, levels in results["meta"]["levels"].items():
        top = levels[-1]["name"]
        at_top = [
            f"{st} {_num(cells[k]['push_p99_ms'], 1)}"
            for st in results["meta"]["stages"]
            if cells.get(k := f"{st}/{scenario}/{top}", {}).get("status") == "ok"
        ]
        if at_top:
            out.append(f"- `{scenario}` at {top}, push p99 ms by stage: " + ", ".join(at_top) + ".")
    out.append(
        "- Load generator the limit (a Locust process near a full core, or behind "
        "schedule while busy): " + (", ".join(limited) if limited else "in no cell") + "."
    )
    busiest = [
        (float(r["verdict"]["busiest_generator_process_pct"]), key)
        for key, runs in results["runs"].items()
        for r in runs
        if r.get("status") == "ok"
    ]
    if busiest:
        pct, where = max(busiest)
        out.append(
            f"- The busiest Locust process averaged at most {pct:.0f}% of a core "
            f"(in {where}); a Locust process is single-threaded (gevent), so 100% is its "
            "ceiling."
        )
    others = [k for k, c in cells.items() if c.get("status") == "ok" and c.get("others_busy")]
    if others:
        out.append(
            f"- In {len(others)} cell(s) processes outside the run (other work on the shared "
            "machine) took over a quarter of a core: those cells' latencies are inflated."
        )
    if busy:
        judged = sum(1 for c in cells.values() if c.get("status") == "ok")
        out.append(
            f"- The machine's cores were over 80% busy in {len(busy)} of {judged} cells "
            "(flag *m*): there generator, stage and other work competed for CPU, so the "
            "stage's figures are a lower bound of what it does on cores of its own."
        )
    return out


def update_results_md(section: str, path: Path = RESULTS_MD) -> None:
    text = path.read_text() if path.exists() else "# Results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "versions"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + (" (with uncommitted changes under versions/)" if dirty else "")


def _render_only(path: Path, *, write: bool) -> int:
    results = json.loads(path.read_text())
    results["findings"] = findings(results)
    section = render(results)
    print(section)
    if write:
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
        update_results_md(section)
        print(f"wrote {RESULTS_MD} and {RESULTS_JSON}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads, 1 repeat, 3 s")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds of sending")
    parser.add_argument("--stages", default=None, help="comma list (default: all that exist)")
    parser.add_argument("--scenarios", default="dm,group,burst")
    parser.add_argument(
        "--churn", action=argparse.BooleanOptionalAction, default=True,
        help="also run the churn scenario on every stage (loss table)",
    )  # fmt: skip
    parser.add_argument("--churn-repeats", type=int, default=1)
    parser.add_argument(
        "--render", type=Path, default=None, metavar="JSON",
        help="only re-render the table from a results JSON (and --write it)",
    )  # fmt: skip
    parser.add_argument("--runs-root", type=Path, default=None)
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=None,
        help="update docs/RESULTS.md and benchmarks/baseline-results.json "
        "(default: yes, except with --quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C: every run stops its processes
    if args.render is not None:
        return _render_only(args.render, write=bool(args.write))
    repeats = args.repeats or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 5.0)
    write = (not args.quick) if args.write is None else args.write
    stages = args.stages.split(",") if args.stages else existing_stages()
    scenarios = args.scenarios.split(",")
    levels = {s: (QUICK_LEVELS if args.quick else LEVELS)[s] for s in scenarios}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    root = args.runs_root or ROOT / "runs" / f"{stamp}-baseline"
    root.mkdir(parents=True, exist_ok=True)

    began = time.time()
    raw: dict[str, list[dict[str, Any]]] = {}
    jobs = [
        (rep, scenario, level, stage)
        for rep in range(repeats)
        for scenario, lvls in levels.items()
        for level in lvls
        for stage in stages
    ]
    if args.churn:
        jobs += [
            (rep, "churn", CHURN_LEVEL, stage)
            for rep in range(args.churn_repeats)
            for stage in stages
        ]
    for n, (rep, scenario, level, stage) in enumerate(jobs, 1):
        key = f"{stage}/{scenario}/{level.name}"
        r = one_run(stage, scenario, level, duration, root, f"r{rep}")
        raw.setdefault(key, []).append(r)
        if r["status"] == "ok":
            desc = (
                f"sends/s {r['accepted_sends_per_s']:.0f}  p99 "
                f"{_num(r['push_p99_ms'], 1)} ms  lost {r['lost']}"
                + ("  GENERATOR-LIMITED" if r["generator_limited"] else "")
            )
        else:
            desc = f"{r['status']}: {r.get('why', '')[:80]}"
        elapsed = time.time() - began
        print(f"[{n}/{len(jobs)} {elapsed / 60:4.1f} min] {key} r{rep}: {desc}", flush=True)

    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "versions": package_versions(),
            "stages": stages,
            "repeats": repeats,
            "duration": duration,
            "quick": args.quick,
            "churn": (
                {"level": vars(CHURN_LEVEL), "repeats": args.churn_repeats, **CHURN_KW}
                if args.churn
                else None
            ),
            "levels": {
                s: [{"name": lv.name, "users": lv.users, "rate": lv.rate} for lv in lvls]
                for s, lvls in levels.items()
            },
            "elapsed_s": round(time.time() - began, 1),
            "commit": _git_commit(),
            "runs_root": str(root),
        },
        "median": {k: median_of(v) for k, v in raw.items()},
        "runs": raw,
    }
    results["findings"] = findings(results)
    section = render(results)
    (root / "baseline-results.json").write_text(json.dumps(results, indent=1))
    (root / "RESULTS-section.md").write_text(section)
    print(section)
    if write:
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
        update_results_md(section)
        print(f"wrote {RESULTS_MD} and {RESULTS_JSON}")
    print(f"run folders under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
