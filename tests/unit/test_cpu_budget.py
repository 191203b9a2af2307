"""benchmarks/cpu_budget.py on a synthetic ladder: each kind's line (µs/msg and idle
burn) is recovered; the ceiling is the lowest of what the cores allow after the idle
burns and what each kind allows on the cores it can use."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_budget() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpu_budget", ROOT / "benchmarks/cpu_budget.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def level(tmp: Path, rate: float, p99: float) -> dict[str, object]:
    run = tmp / f"L-{rate:g}"
    run.mkdir()
    # gateway: 10 % idle + 500 µs/msg; the broker (java): 40 % idle + 200 µs/msg;
    # the generator: 100 µs/msg and no idle
    manifest = {
        "params": {"offered_sends_per_s": rate},
        "cluster": {"processes": {"gateway-0": {"pid": 1}}},
        "stage_cpu": {
            "per_process_pct_mean": {"1": 10 + rate * 0.05, "2": 40 + rate * 0.02},
            "names": {"1": "python3", "2": "java"},
        },
        "load_generator": {"cpu": {"total_pct_mean": rate * 0.01}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return {"offered": rate, "p99_ms": p99, "lost": 0, "delivered_per_s": rate, "run_dir": str(run)}


def test_kinds_lines_and_the_ceiling_are_recovered(tmp_path: Path) -> None:
    budget = load_budget()
    levels = [level(tmp_path, 100, 10), level(tmp_path, 200, 20), level(tmp_path, 400, 900)]
    summary = {
        "stage": "v4",
        "scenario": "dm",
        "threshold_ms": 100,
        "levels": levels,
        "knee": {"knee": 200.0, "status": "knee"},
    }
    (tmp_path / "capacity.json").write_text(json.dumps(summary))
    b = budget.budget(tmp_path, cores=2)
    assert b["levels_fitted"] == [100, 200]  # the failing level is left out
    gateway = b["kinds"]["gateway"]
    assert gateway["us_per_msg"] == pytest.approx(500) and gateway["processes"] == 1
    assert gateway["idle_pct"] == pytest.approx(10)
    assert b["kinds"]["kafka"]["us_per_msg"] == pytest.approx(200)
    assert b["kinds"]["generator"]["us_per_msg"] == pytest.approx(100)
    assert b["us_per_msg"] == pytest.approx(800) and b["idle_pct"] == pytest.approx(50)
    assert b["machine_ceiling_msgs_per_s"] == pytest.approx(150 / 0.08, abs=1)  # 1,875/s
    # the one gateway process alone: (100 % - 10 %) / 0.05 % per msg/s = 1,800 msgs/s;
    # the JVM may use both cores: (200 % - 40 %) / 0.02 = 8,000
    assert b["kinds"]["gateway"]["ceiling_msgs_per_s"] == pytest.approx(1800, abs=1)
    assert b["kinds"]["kafka"]["ceiling_msgs_per_s"] == pytest.approx(8000, abs=1)
    assert b["ceiling_msgs_per_s"] == pytest.approx(1800, abs=1)
    assert b["limited_by"] == "gateway"
    assert b["knee_over_ceiling"] == pytest.approx(200 / 1800, abs=0.01)
