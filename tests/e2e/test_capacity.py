"""`imlab capacity` end to end: a two-level ladder on v1, a few seconds a level, leaves a
run folder per level and the capacity summary (the knee's logic is in
tests/unit/test_capacity.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from imlab_app.cli import main as imlab_main


def test_a_two_level_ladder_leaves_its_summary_and_run_folders(tmp_path: Path) -> None:
    parent = tmp_path / "capacity-v1"
    argv = ["capacity", "--stage", "v1", "--scenario", "dm", "--users", "10", "--processes", "2"]
    argv += ["--start", "40", "--factor", "2", "--max", "80", "--level-seconds", "2"]
    argv += ["--run-dir", str(parent)]
    with (tmp_path / "stdout.txt").open("w") as out, contextlib.redirect_stdout(out):
        assert imlab_main(argv) == 0
    printed = (tmp_path / "stdout.txt").read_text()
    summary = json.loads((parent / "capacity.json").read_text())
    assert [lv["offered"] for lv in summary["levels"]] == [40.0, 80.0]
    for lv in summary["levels"]:
        run = Path(lv["run_dir"])
        assert run.parent == parent and (run / "metrics.json").exists()
        assert (run / "manifest.json").exists()
    knee = summary["knee"]
    assert knee["status"] in ("no knee within range", "knee", "below range", "generator-bound")
    assert knee["sentence"] in printed and knee["sentence"] in (parent / "capacity.md").read_text()
    assert summary["machine"]["cpu_count"]


def test_several_stages_run_one_after_another_into_one_report(tmp_path: Path) -> None:
    out_dir = tmp_path / "all"
    argv = ["capacity", "--stages", "v1,v2", "--scenario", "dm", "--users", "10"]
    argv += ["--processes", "2", "--start", "40", "--max", "40", "--level-seconds", "2"]
    argv += ["--out", str(out_dir)]
    with (tmp_path / "stdout.txt").open("w") as out, contextlib.redirect_stdout(out):
        assert imlab_main(argv) == 0
    printed = (tmp_path / "stdout.txt").read_text()
    assert "one stage after another, never two at once" in printed
    assert printed.index("== v1 (1 of 2)") < printed.index("== v2 (2 of 2)")
    record = json.loads((out_dir / "capacity-all.json").read_text())
    assert record["sequential"] and [e["stage"] for e in record["ladders"]] == ["v1", "v2"]
    assert record["machine"]["cpu_count"] and len(record["machine"]["loadavg_end"]) == 3
    for e in record["ladders"]:
        assert (out_dir / e["stage"] / "capacity.json").exists()
    summary = (out_dir / "report" / "summary.md").read_text()
    assert "**Capacity: dm**" in summary and (out_dir / "report" / "capacity-dm.png").exists()
    for stage in ("v1", "v2"):
        assert f"- Capacity, scenario dm, {stage}: " in summary
