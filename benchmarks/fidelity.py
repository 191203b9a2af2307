"""The model against the real stages, stage by stage: each stage is calibrated from the
levels of its real capacity ladder that held, then every level of that ladder is
simulated on this machine's shared cores and compared (push p50 and p99, deliveries per
second, losses), as is the knee; with `--faults`, each stage's faults at one low load.

    .venv/bin/python benchmarks/fidelity.py [--ladders runs/capacity-dm] [--stages v1,v2,v3,v4,v5]
        [--faults] [--write-defaults] [--out runs/fidelity]

Without `--ladders` it first climbs the ladders (`imlab capacity --stages`, dm, from 100
msgs/s, doubling, each level warmed for `--warmup` seconds first). Only CPU is fitted
(and the link, on the two lowest levels): every latency, the failing levels and the
knee are predictions.
`--write-defaults` writes each stage's calibration to sim/calibration/<stage>.json (the
defaults of `imlab sim`). Prints and writes fidelity.json and fidelity.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab.cluster import machine_info
from imlab.services import install_signal_handlers
from loadtest.capacity import CapacityOptions, run_capacity_all
from loadtest.runner import LoadOptions, run_load
from reports.knee import Level, find_knee
from sim.calibrate import calibrate, machine_capacity, read_run, twin_options
from sim.params import CALIBRATION_DIR, stage_defaults
from sim.run import run_sim

FAULTS: dict[str, list[str]] = {
    "v1": ["churn:0.3"],
    "v2": ["redis-outage:3s@3s", "churn:0.3"],
    "v3": ["broker-down:3s@3s", "kafka-loss:0.05", "crash:server-1@3s"],
    "v4": ["kafka-loss:0.05", "crash:worker-1@3s", "crash:gateway-1@3s"],
    "v5": ["redis-master-kill@3s", "db-restart:2s@3s", "kafka-loss:0.05"],
}
"""The faults compared per stage (at the ladder's first load, 10 s of sending)."""


COMPARED = ("push_p50_ms", "push_p99_ms", "delivered_per_s")


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    push = (metrics.get("latency_ms") or {}).get("push") or {}
    d = metrics.get("deliveries") or {}
    s = metrics.get("sends") or {}
    return {
        "push_p50_ms": push.get("p50"),
        "push_p99_ms": push.get("p99"),
        "delivered_per_s": (metrics.get("throughput") or {}).get("deliveries_per_s"),
        "lost": int(d.get("lost", 0)),
        "expected": int(d.get("expected", 0)),
        "acked_ok": int(s.get("acked_ok", 0)),
        "acked_error": int(s.get("acked_error", 0)),
    }


def outside_pct(run_dir: Path) -> float:
    """% of a core processes outside the run used during it (the load tool's figure)."""
    man = json.loads((run_dir / "manifest.json").read_text())
    return float(man.get("other_processes_cpu_pct") or 0.0)


def error(real: float | None, sim: float | None) -> float | None:
    """Relative error of the model, (sim - real) / real."""
    if real is None or sim is None or real == 0:
        return None
    return (sim - real) / real


def _level(offered: float, f: dict[str, Any], run_dir: str) -> Level:
    return Level(
        offered=offered,
        p99_ms=f["push_p99_ms"],
        lost=f["lost"],
        generator_bound=False,
        delivered_per_s=f["delivered_per_s"],
        run_dir=run_dir,
    )


def _topology(run_dir: Path) -> str:
    f = read_run(run_dir)
    return f"{f.nodes}+{f.workers}" if f.workers else str(f.nodes)


def _offered(run_dir: Path) -> float:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return float(manifest["params"]["offered_sends_per_s"])


def twin(real_dir: Path, params_file: Path, out_dir: Path) -> dict[str, Any]:
    """The figures of a real run's simulated twin (`sim.calibrate.twin_options`)."""
    opts = twin_options(real_dir, params=str(params_file), run_dir=out_dir)
    return figures(run_sim(opts).metrics)


def stage_fidelity(
    stage: str,
    ladder: Path,
    out: Path,
    *,
    with_faults: bool,
    write_defaults: bool,
    committed: bool = False,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """Calibrate `stage` from the levels of `ladder` that held (or, `committed`, take its
    calibration in sim/calibration/ as it is) and compare every level with its twin."""
    levels = sorted(
        (d for d in ladder.glob("L*-*") if (d / "manifest.json").exists()),
        key=lambda d: int(d.name[1:].split("-")[0]),
    )
    if len(levels) < 2:
        raise SystemExit(f"{ladder}: fewer than two levels to calibrate from")
    out.mkdir(parents=True, exist_ok=True)
    real_levels = [
        _level(_offered(d), figures(json.loads((d / "metrics.json").read_text())), str(d))
        for d in levels
    ]
    knee_real = find_knee(real_levels)
    held = [
        d
        for d, lv in zip(levels, real_levels, strict=True)
        if knee_real.knee and lv.offered <= knee_real.knee
    ]
    fit_on = [] if committed else held if len(held) >= 2 else levels[:2]
    params_file = out / "params.json"
    if committed:
        params = stage_defaults(stage, this_machine=True)
    else:
        saturated = knee_real.first_failing is not None
        params = calibrate(fit_on, capacity=machine_capacity(levels) if saturated else None)
    params.save(params_file)
    if write_defaults:
        CALIBRATION_DIR.mkdir(exist_ok=True)
        params.save(CALIBRATION_DIR / f"{stage}.json")
    rows = []
    sim_levels = []
    for real_dir in levels:
        offered = _offered(real_dir)
        real = figures(json.loads((real_dir / "metrics.json").read_text()))
        sim = twin(real_dir, params_file, out / f"sim-{real_dir.name}")
        rows.append(
            {
                "level": real_dir.name,
                "offered": offered,
                "outside_pct": outside_pct(real_dir),
                "fitted": real_dir in fit_on,
                "real": real,
                "sim": sim,
                "error": {k: error(real[k], sim[k]) for k in COMPARED},
            }
        )
        sim_levels.append(_level(offered, sim, str(out / f"sim-{real_dir.name}")))
        print(f"  {stage} {real_dir.name}: {_row_text(rows[-1])}", flush=True)
    record: dict[str, Any] = {
        "stage": stage,
        "ladder": str(ladder),
        "topology": _topology(levels[0]),
        "params": str(params_file),
        "kinds": params.source.get("kinds"),
        "client_link_ms": round(params.client_link.mean * 1000, 3),
        "levels": rows,
        "fitted_on": [d.name for d in fit_on],
        "machine_cores": params.machine_cores,
        "knee_real": knee_real.to_dict(),
        "knee_sim": find_knee(sim_levels).to_dict(),
    }
    if with_faults:
        record["faults"] = stage_faults(stage, levels[0], params_file, out, warmup=warmup)
    return record


def stage_faults(
    stage: str, low: Path, params_file: Path, out: Path, *, warmup: float = 0.0
) -> list[dict[str, Any]]:
    """Each of the stage's faults at the ladder's first load, warmed like the ladder, and
    its twin (the model has no JIT: the warm-up is not simulated)."""
    facts = read_run(low)
    rows = []
    for spec in FAULTS.get(stage, []):
        name = spec.split("@")[0].replace(":", "-")
        real_dir = out / f"real-{name}"
        if not (real_dir / "metrics.json").exists():  # a folder from before is judged again
            run_load(
                LoadOptions(
                    stage=stage,
                    scenario=facts.scenario,
                    users=facts.users,
                    rate=facts.rate,
                    duration=10.0,
                    faults=spec,
                    max_drain=15.0,
                    warmup=warmup,
                    run_dir=real_dir,
                    quiet=True,
                )
            )
        real = figures(json.loads((real_dir / "metrics.json").read_text()))
        sim = twin(real_dir, params_file, out / f"sim-{name}")
        rows.append({"fault": spec, "real": real, "sim": sim})
        print(
            f"  {stage} {spec}: acked {real['acked_ok']}/{sim['acked_ok']}, lost "
            f"{real['lost']}/{sim['lost']} of {real['expected']}/{sim['expected']}, push p99 "
            f"{_ms(real['push_p99_ms'])}/{_ms(sim['push_p99_ms'])} (real/model)",
            flush=True,
        )
    return rows


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.0f}%"


def _row_text(r: dict[str, Any]) -> str:
    re_, si, er = r["real"], r["sim"], r["error"]
    return (
        f"{r['offered']:g}/s p50 {_ms(re_['push_p50_ms'])}/{_ms(si['push_p50_ms'])} ms "
        f"({_pct(er['push_p50_ms'])}), p99 {_ms(re_['push_p99_ms'])}/{_ms(si['push_p99_ms'])} "
        f"ms ({_pct(er['push_p99_ms'])}), delivered/s {_ms(re_['delivered_per_s'])}/"
        f"{_ms(si['delivered_per_s'])}, lost {re_['lost']}/{si['lost']}"
        + (" [fitted]" if r["fitted"] else "")
    )


def _label(st: dict[str, Any]) -> str:
    return f"{st['stage']} ({st['topology']})"


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "| stage | offered msgs/s | push p50 real / model | p99 real / model "
        "| delivered/s real / model | lost real / model | outside CPU |",
        "|---|--:|---|---|---|---|--:|",
    ]
    for st in record["stages"]:
        for r in st["levels"]:
            re_, si, er = r["real"], r["sim"], r["error"]
            lines.append(
                f"| {_label(st)}{' fitted' if r['fitted'] else ''} | {r['offered']:g} | "
                f"{_ms(re_['push_p50_ms'])} / {_ms(si['push_p50_ms'])} ms "
                f"({_pct(er['push_p50_ms'])}) | {_ms(re_['push_p99_ms'])} / "
                f"{_ms(si['push_p99_ms'])} ms ({_pct(er['push_p99_ms'])}) | "
                f"{_ms(re_['delivered_per_s'])} / {_ms(si['delivered_per_s'])} | "
                f"{re_['lost']} / {si['lost']} | {r['outside_pct']:.0f}% |"
            )
    lines += ["", "| stage | knee real | knee model |", "|---|--:|--:|"]
    for st in record["stages"]:
        kr, ks = st["knee_real"], st["knee_sim"]
        lines.append(
            f"| {_label(st)} | {kr.get('knee') or '-'} ({kr['status']}) | "
            f"{ks.get('knee') or '-'} ({ks['status']}) |"
        )
    faults = [(st["stage"], f) for st in record["stages"] for f in st.get("faults", [])]
    if faults:
        lines += [
            "",
            "| stage, fault | acked ok real / model | lost real / model | push p99 real / model |",
            "|---|---|---|---|",
        ]
        for stage, f in faults:
            re_, si = f["real"], f["sim"]
            lines.append(
                f"| {stage} `{f['fault']}` | {re_['acked_ok']} / {si['acked_ok']} | "
                f"{re_['lost']} of {re_['expected']} / {si['lost']} of {si['expected']} | "
                f"{_ms(re_['push_p99_ms'])} / {_ms(si['push_p99_ms'])} ms |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ladders", type=Path, help="an `imlab capacity --stages` folder")
    ap.add_argument("--stages", default="v1,v2,v3,v4,v5")
    ap.add_argument("--faults", action="store_true", help="also each stage's faults")
    ap.add_argument("--write-defaults", action="store_true", help="write sim/calibration/")
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of each level's schedule played unrecorded first, faults' runs too "
        "(default 20, as the committed calibrations' ladders: a warm Kafka JVM; 0: cold)",
    )
    ap.add_argument(
        "--check-ladder",
        type=Path,
        action="append",
        default=[],
        help="a further `imlab capacity` ladder folder (e.g. v3 on 1 server), compared with "
        "its stage's committed calibration, not calibrated on (repeatable)",
    )
    args = ap.parse_args()
    install_signal_handlers()
    stages = [s for s in args.stages.split(",") if s]
    began = time.time()
    ladders = args.ladders
    if ladders is None and not args.check_ladder:
        ladders = args.out / "ladders"
        run_capacity_all(
            stages,
            lambda st, parent: CapacityOptions(
                stage=st,
                scenario="dm",
                start=100.0,
                users=200,
                refine=2,
                parent=parent,
                generator="locust",  # the calibrations' loadgen kind models Locust
                warmup=args.warmup,
            ),
            ladders,
        )
    record: dict[str, Any] = {
        "machine": machine_info(),
        "started_at": began,
        "ladders": str(ladders) if ladders else None,
        "stages": [],
    }
    for stage in stages if not args.check_ladder or args.ladders else []:
        print(f"== {stage}", flush=True)
        assert ladders is not None
        record["stages"].append(
            stage_fidelity(
                stage,
                ladders / stage,
                args.out / stage,
                with_faults=args.faults,
                write_defaults=args.write_defaults,
                warmup=args.warmup,
            )
        )
    for ladder in args.check_ladder:
        stage = read_run(next(ladder.glob("L1-*"))).stage
        print(f"== {ladder} ({stage}, committed calibration)", flush=True)
        record["stages"].append(
            stage_fidelity(
                stage,
                ladder,
                args.out / ladder.name,
                with_faults=False,
                write_defaults=False,
                committed=True,
            )
        )
    record["seconds"] = round(time.time() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.json").write_text(json.dumps(record, indent=1, default=str))
    text = markdown(record)
    (args.out / "fidelity.md").write_text(text)
    print(text)
    print(f"machine: {record['machine']}; {record['seconds']:.0f} s; folder {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
