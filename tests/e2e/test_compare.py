"""`imlab compare --quick`, the main job, end to end: every case runs (real and
simulated), the report and summary exist, and the matrix covers every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imlab_app.compare import plan_cases


# Three load levels per stage in --quick: 16 real runs, 4-5 minutes on 2 shared cores.
@pytest.mark.timeout(1200)
def test_compare_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "imlab_app.cli", "compare", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "compare.json").read_text())
    assert len(summary["cases"]) == len(plan_cases(quick=True))
    assert all(c["ok"] for c in summary["cases"])
    for c in summary["cases"]:
        assert (Path(c["run_dir"]) / "metrics.json").exists()
    assert (out / "report" / "index.html").exists()
    assert "report:" in proc.stdout and "| run |" in proc.stdout
