"""The v2 model against the real v2 under the `group` scenario at two load levels.

Two short real runs are made here with the load tool's runner. The model is
calibrated from the lower-load run only (server and Redis CPU, Locust CPU, the
send lag, and the link delay fitted to the *ack* median), then both loads are
simulated with the load generator modelled as its Locust processes. The
simulated median push latency must be within TOLERANCE of the real one at both
loads: at the first it checks what the ack fit implies for pushes, at the second
(four times the sends) it is a prediction.

A real run during which processes outside it used a quarter of a core or more
(the load tool's own threshold) is made again once; if the machine stays that
busy the comparison is skipped, since it would measure the neighbours.

Why 40%: measured on clean runs while building this test (docs/RESULTS.md),
the model was within -12%..+1% of the real median at 80 sends/s and +1%..+33%
at 320 sends/s. The bias at the higher load is systematic: the real server and
Locust get cheaper per message as their loops get busier (the real median even
fell from 80 to 320 sends/s in most sittings) while the model's service times
are constant, so it adds queueing the real system does not show. On top of
that, real medians of identical runs spread by about ±12% between sittings on
this 2-core machine, where the load generator shares the cores with the
server. Medians are compared, not tails: the real p99 carries scheduler noise
the model does not try to reproduce.
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
    params = calibrate([runs[0][1]])
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
