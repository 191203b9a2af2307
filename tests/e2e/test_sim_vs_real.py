"""The model against the real stages: v2 calibrated here from two real `group` runs, and
every stage's committed calibration against one short real run of it (at the end).

Two short real runs are made here with the load tool's runner (80 and 320 sends/s).
The model is calibrated from them: server, Redis and Locust CPU as slopes of CPU
against load, the send lag, and one client link delay fitted so that the simulated
*ack* medians match the real ones on average. The push latency is never fitted: the
simulated median push latency at each load must be within TOLERANCE of the real one.

A real run during which processes outside it used a quarter of a core or more
(the load tool's own threshold) is made again once; if the machine stays that
busy the comparison is skipped, since it would measure the neighbours.

Why 40%: on this VM the real median *falls* as load rises (busier processes and
virtual CPUs wake up faster: 4.8 ms at 80 sends/s and 3.2 ms at 320 sends/s on a
quiet machine, 3.0-3.6 and 2.4-3.3 ms while other sessions kept the cores busy),
and the model's service times are constant, so its median can only rise. One
link delay fitted to both loads sits between them: measured on the quiet machine
the model was -20% at 80 and +23% at 320 sends/s, and within about ±15% on busy
sittings (docs/RESULTS.md). 40% covers that with room for the run-to-run spread
of real medians. Medians are compared, not tails: the real p99 carries scheduler
noise the model does not try to reproduce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.monitor import OTHER_BUSY_PCT
from loadtest.runner import LoadOptions, LoadRunError, run_load
from sim.calibrate import calibrate
from sim.run import SimOptions, run_sim

TOLERANCE = 0.40
LOADS = [(40, 2.0), (80, 4.0)]  # (users, sends per second per user): 80 and 320 sends/s
DURATION = 6.0


def real_run(tmp: Path, users: int, rate: float) -> tuple[dict[str, Any], Path]:
    """One real run; made again once if processes outside it took the cores meanwhile
    (then its latencies measure the neighbours, not the stage)."""
    busy = 0.0
    for attempt in range(2):
        opts = LoadOptions(
            stage="v2",
            scenario="group",
            users=users,
            rate=rate,
            duration=DURATION,
            run_dir=tmp / f"real-{users}x{rate:g}-{attempt}",
            quiet=True,
        )
        try:
            result = run_load(opts)
        except LoadRunError as exc:  # another Locust master held its port
            if "Address already in use" not in str(exc) or attempt:
                raise
            continue
        busy = float(result.manifest.get("other_processes_cpu_pct") or 0.0)
        if busy < OTHER_BUSY_PCT:
            return result.metrics, result.run_dir
    pytest.skip(f"processes outside the test used {busy:.0f}% of a core during the real runs")


def test_simulated_v2_push_median_is_near_the_real_one_at_two_loads(tmp_path: Path) -> None:
    runs = [real_run(tmp_path, users, rate) for users, rate in LOADS]
    real = [m for m, _ in runs]
    for m in real:
        assert m["deliveries"]["lost"] == 0 and m["sends"]["acked_error"] == 0
    params = calibrate([run_dir for _, run_dir in runs])
    params_file = tmp_path / "params.json"
    params.save(params_file)
    report = []
    for (users, rate), m in zip(LOADS, real, strict=True):
        sim = run_sim(
            SimOptions(
                stage="v2",
                scenario="group",
                users=users,
                rate=rate,
                duration=DURATION,
                params=str(params_file),
                run_dir=tmp_path / f"sim-{users}x{rate:g}",
                quiet=True,
            )
        ).metrics
        real_p50 = m["latency_ms"]["push"]["p50"]
        sim_p50 = sim["latency_ms"]["push"]["p50"]
        report.append(f"{users * rate:g} sends/s: real {real_p50:.2f} ms, sim {sim_p50:.2f} ms")
        assert sim["deliveries"]["lost"] == 0
        assert abs(sim_p50 - real_p50) <= TOLERANCE * real_p50, "; ".join(report)
    print("; ".join(report))


# ---------------------------------------------------------------- every stage's calibration

STAGE_TOLERANCE = 0.35
"""Push p50, model against real, at 100 dm msgs/s: the warm sitting of
benchmarks/fidelity.py that wrote the calibrations (2026-12-02 07:12 UTC) gave v1 +15 %,
v2 -1 %, v3 -14 %, v4 +16 %, v5 +25 % (docs/RESULTS.md, "Fidelity"); this test's own
short runs gave v1 +24 %, v2 0 %, v3 -19 %, v4 0 %, v5 +11 % on the day, and real
medians of one stage move by 20 % between runs here."""
STAGE_LOAD = 100  # dm msgs/s: under every stage's knee here (the lowest, v5's: 168-283)
WARMUP = {"v3": 5.0, "v4": 5.0, "v5": 5.0}
"""Seconds of unrecorded sending first: the calibrations came from warm ladders (20 s),
and a fresh Kafka JVM spends its first seconds compiling (docs/SERVICES.md); 5 s takes
the worst of it and keeps the suite short."""


@pytest.mark.parametrize("stage", ["v1", "v2", "v3", "v4", "v5"])
def test_each_stage_calibration_predicts_its_real_run(tmp_path: Path, stage: str) -> None:
    """The stage's committed calibration (sim/calibration/<stage>.json), on this
    machine's shared cores, against one short real dm run: push p50 within
    STAGE_TOLERANCE, the same deliveries per second within 5 % and nothing lost in either."""
    from sim.params import CALIBRATION_DIR

    assert (CALIBRATION_DIR / f"{stage}.json").exists(), "benchmarks/fidelity.py --write-defaults"
    busy = 0.0
    for attempt in range(2):
        result = run_load(
            LoadOptions(
                stage=stage,
                scenario="dm",
                users=100,
                rate=STAGE_LOAD / 100,
                duration=DURATION,
                warmup=WARMUP.get(stage, 0.0),
                run_dir=tmp_path / f"real-{attempt}",
                quiet=True,
            )
        )
        busy = float(result.manifest.get("other_processes_cpu_pct") or 0.0)
        if busy < OTHER_BUSY_PCT:
            break
    else:
        pytest.skip(f"processes outside the test used {busy:.0f}% of a core during the real run")
    real = result.metrics
    sim = run_sim(
        SimOptions(
            stage=stage,
            scenario="dm",
            users=100,
            rate=STAGE_LOAD / 100,
            duration=DURATION,
            this_machine=True,
            run_dir=tmp_path / "sim",
            quiet=True,
        )
    ).metrics
    real_p50 = real["latency_ms"]["push"]["p50"]
    sim_p50 = sim["latency_ms"]["push"]["p50"]
    said = f"{stage} at {STAGE_LOAD} dm/s: push p50 real {real_p50:.2f}, model {sim_p50:.2f} ms"
    print(said)
    assert real["deliveries"]["lost"] == 0 and sim["deliveries"]["lost"] == 0
    real_rate = real["throughput"]["deliveries_per_s"]
    sim_rate = sim["throughput"]["deliveries_per_s"]
    assert abs(sim_rate - real_rate) <= 0.05 * real_rate, (real_rate, sim_rate)
    assert abs(sim_p50 - real_p50) <= STAGE_TOLERANCE * real_p50, said
