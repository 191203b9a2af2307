"""`imlab capacity --stages` end to end: two-level ladders on v1 and v2, a few seconds a
level, leave a run folder per level, each ladder's summary and one report (the knee's
logic is in tests/unit/test_capacity.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from imlab_app.cli import main as imlab_main


def test_several_stages_run_one_after_another_into_one_report(tmp_path: Path) -> None:
    """Two stages, two levels each: a run folder per level, each ladder's summary and
    knee sentence, one report (one test: each ladder costs a stage start per level)."""
    out_dir = tmp_path / "all"
    argv = ["capacity", "--stages", "v1,v2", "--scenario", "dm", "--users", "10"]
    argv += ["--processes", "2", "--start", "40", "--factor", "2", "--max", "80"]
    argv += ["--level-seconds", "2", "--warmup", "1"]
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
        parent = out_dir / e["stage"]
        summary_of = json.loads((parent / "capacity.json").read_text())
        assert [lv["offered"] for lv in summary_of["levels"]] == [40.0, 80.0]
        assert summary_of["generator"] == "node" and summary_of["warmup_s"] == 1.0
        for lv in summary_of["levels"]:
            run = Path(lv["run_dir"])
            assert run.parent == parent and (run / "metrics.json").exists()
            manifest = json.loads((run / "manifest.json").read_text())
            assert manifest["load_generator"]["tool"] == "node"  # capacity's default
        knee = summary_of["knee"]
        assert knee["status"] in ("no knee within range", "knee", "below range", "generator-bound")
        assert knee["sentence"] in printed
        assert knee["sentence"] in (parent / "capacity.md").read_text()
    summary = (out_dir / "report" / "summary.md").read_text()
    assert "**Capacity: dm**" in summary and (out_dir / "report" / "capacity-dm.png").exists()
    for stage in ("v1", "v2"):
        assert f"- Capacity, scenario dm, {stage}: " in summary
