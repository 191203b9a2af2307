"""The shared machine of the model (`sim.engine.Machine`), calibration by process kind
(`sim.calibrate`), and the capacity ladder's refinement, on synthetic inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loadtest import capacity
from loadtest.capacity import CapacityOptions, run_capacity
from reports.knee import Level
from sim.calibrate import KindFit, _cpu_by_kind, _fit_kind, apply_fits
from sim.engine import FifoServer, Machine
from sim.params import DEFAULTS, Dist

pytestmark = pytest.mark.unit


def test_a_burst_runs_at_full_speed_while_the_others_leave_a_core_free() -> None:
    m = Machine(2.0, background=0.5)
    assert m.stretch("a", 0.0, 0.001) == pytest.approx(0.001)


def test_past_the_cores_every_burst_slows_in_proportion() -> None:
    m = Machine(2.0, background=3.0)  # the others want three cores: (3 + 1) / 2
    assert m.stretch("a", 0.0, 0.001) == pytest.approx(0.002)


def test_a_process_is_slowed_by_the_others_work_not_its_own() -> None:
    m = Machine(1.0, tau=1.0)
    for i in range(100):
        m.stretch("a", i * 0.01, 0.005)  # half a core of its own work
    assert m.stretch("a", 1.0, 0.001) == pytest.approx(0.001)
    # b shares the core with a's recent work: after 1 s (tau) of half a core, 0.5 (1 - 1/e)
    assert m.stretch("b", 1.0, 0.001) == pytest.approx(
        0.001 * (1 + 0.5 * (1 - math.exp(-1))), rel=0.02
    )


def test_recent_work_decays() -> None:
    m = Machine(1.0, tau=0.1)
    m.stretch("a", 0.0, 0.5)
    assert m.load(0.0) == pytest.approx(5.0)
    assert m.load(1.0) < 0.001
    assert m.stretch("b", 1.0, 0.001) == pytest.approx(0.001, rel=1e-3)


def test_a_server_on_a_machine_counts_its_cpu_not_its_wait() -> None:
    server = FifoServer("a")
    server.machine = Machine(1.0, background=1.0)  # everything takes twice as long
    assert server.serve(0.0, 0.001) == pytest.approx(0.002)
    assert server.busy == pytest.approx(0.001)


def test_a_kind_s_factor_is_the_slope_and_its_idle_the_intercept() -> None:
    fit = _fit_kind("front", [0.1, 0.2, 0.4], [0.15, 0.25, 0.45], count=2)
    assert fit.factor == pytest.approx(1.0)
    assert fit.idle == pytest.approx(0.025)  # 0.05 of a core over two processes


def test_one_run_gives_real_over_model() -> None:
    fit = _fit_kind("kafka", [0.1], [0.3], count=1)
    assert fit.factor == pytest.approx(3.0) and fit.idle == 0.0
    assert "idle included" in fit.how


def test_fits_scale_every_cost_of_their_kind_and_a_v3_server_consumes() -> None:
    fits = [KindFit("front", 2.0, 0.05, ""), KindFit("kafka", 3.0, 0.5, "")]
    p = apply_fits(DEFAULTS, fits, consumes_on_front=True)
    assert p.node_request == Dist(DEFAULTS.node_request.mean * 2, DEFAULTS.node_request.cv)
    assert p.node_push.mean == pytest.approx(DEFAULTS.node_push.mean * 2)
    assert p.worker_record.mean == pytest.approx(DEFAULTS.worker_record.mean * 2)
    assert p.kafka_record.mean == pytest.approx(DEFAULTS.kafka_record.mean * 3)
    assert p.redis_op == DEFAULTS.redis_op
    assert p.idle_cpu == {"front": 0.05, "kafka": 0.5}
    v4 = apply_fits(DEFAULTS, fits, consumes_on_front=False)
    assert v4.worker_record == DEFAULTS.worker_record


def _manifest(names: dict[str, str] | None) -> dict[str, Any]:
    cpu: dict[str, Any] = {"per_process_pct_mean": {"1": 30.0, "2": 60.0, "3": 5.0, "4": 20.0}}
    if names is not None:
        cpu["names"] = names
    return {
        "cluster": {
            "processes": {"gateway-0": {"pid": 1}},
            "broker": {"nodes": [{"pid": 2}]},
            "postgres": {"pid": 4},
        },
        "stage_cpu": cpu,
        "load_generator": {"cpu": {"total_pct_mean": 40.0}},
    }


def test_cpu_by_kind_tells_postgres_from_redis_by_name() -> None:
    m = _manifest({"1": "python", "2": "java", "3": "redis-server", "4": "postgres"})
    got = _cpu_by_kind(m, {k: float(v) for k, v in m["stage_cpu"]["per_process_pct_mean"].items()})
    assert got == pytest.approx(
        {"front": 0.3, "kafka": 0.6, "redis": 0.05, "postgres": 0.2, "loadgen": 0.4}
    )


def test_without_names_postgres_and_redis_are_services() -> None:
    m = _manifest(None)
    got = _cpu_by_kind(m, {k: float(v) for k, v in m["stage_cpu"]["per_process_pct_mean"].items()})
    assert got["services"] == pytest.approx(0.25) and "redis" not in got


def test_the_ladder_is_refined_between_the_knee_and_the_first_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offered: list[float] = []

    class Result:
        def __init__(self, rate: float, run_dir: Path) -> None:
            self.rate, self.run_dir = rate, run_dir

    def fake_run_load(opts: Any, out: Any = None) -> Result:
        offered.append(opts.rate * opts.users)
        return Result(opts.rate * opts.users, opts.run_dir)

    def fake_level_of(result: Result) -> Level:
        p99 = 10.0 if result.rate <= 300 else 500.0  # the true knee lies at 300
        return Level(result.rate, p99, 0, False, result.rate, str(result.run_dir))

    monkeypatch.setattr(capacity, "run_load", fake_run_load)
    monkeypatch.setattr(capacity, "level_of", fake_level_of)
    summary = run_capacity(
        CapacityOptions(stage="v1", start=100, users=100, refine=2, parent=tmp_path), out=None
    )
    assert offered[:4] == [100, 200, 400, 800]  # two failures in a row end the ladder
    assert offered[4:] == [pytest.approx(282.8, abs=0.1), pytest.approx(336.4, abs=0.1)]
    assert summary["knee"]["knee"] == pytest.approx(282.8, abs=0.1)
    assert json.loads((tmp_path / "capacity.json").read_text())["levels"][-1]["offered"] > 300


@pytest.mark.parametrize("stage", ["v1", "v2", "v3", "v4", "v5"])
def test_every_stage_has_a_calibration_that_says_where_it_came_from(stage: str) -> None:
    from sim.params import CALIBRATION_DIR, stage_defaults

    raw = json.loads((CALIBRATION_DIR / f"{stage}.json").read_text())
    source = raw["source"]
    assert source["stage"] == stage and source["how"] == "imlab calibrate"
    assert len(source["runs"]) >= 2 and source["cores"] > 0 and source["kinds"]["front"]
    scale = stage_defaults(stage)  # a scale model: every process on a core of its own
    assert scale.machine_cores == 0 and scale.loadgen_processes == 0
    here = stage_defaults(stage, this_machine=True)
    assert here.machine_cores == raw["machine_cores"] > 0 and here.loadgen_processes >= 1
