"""`imlab compare --quick`, the main job, end to end on one stage (v4: a broker, gateways
and workers, the most moving parts): every case runs, real and simulated, and the report
and summary exist. `make demo` runs every stage; tests/unit/test_compare_plan.py checks
the whole matrix, and the stages' own tests run each of them for real."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imlab_app.compare import plan_cases


# Three load levels and a fault: 4 real runs, about 40 s here.
@pytest.mark.timeout(900)
def test_compare_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "imlab_app.cli", "compare", "--quick", "--stages", "v4",
         "--out", str(out)],
        capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "compare.json").read_text())
    assert len(summary["cases"]) == len(plan_cases(quick=True, only=["v4"]))
    assert {c["case"]["stage"] for c in summary["cases"]} == {"v4"}
    assert all(c["ok"] for c in summary["cases"])
    for c in summary["cases"]:
        assert (Path(c["run_dir"]) / "metrics.json").exists()
    # Each real run starts while the one before finishes, but sends only once it is over.
    real = [json.loads((Path(c["run_dir"]) / "manifest.json").read_text())
            for c in summary["cases"] if c["case"]["kind"] == "real"]  # fmt: skip
    for a, b in itertools.pairwise(real):
        a_stopped = a["drain_end"] + a["timing"]["stopped"] - a["timing"]["synced"]
        assert b["started_at"] > a_stopped, (a["timing"], b["timing"])
    assert (out / "report" / "index.html").exists()
    assert "report:" in proc.stdout and "| run |" in proc.stdout
