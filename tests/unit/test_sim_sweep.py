"""`imlab sim --sweep` (sim.sweep): the syntax, and a tiny sweep whose knee grows with the
number of processes until a shared service (here a deliberately slow Redis) saturates."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sim.sweep import SweepOptions, parse_sweep, run_sweep


def test_parse_sweep() -> None:
    assert parse_sweep("nodes=1..4").counts == (1, 2, 3, 4)
    assert parse_sweep("nodes=1..16*2").counts == (1, 2, 4, 8, 16)
    assert parse_sweep("gateways=1..6*2").counts == (1, 2, 4, 6)
    assert parse_sweep("workers=8,1,2").counts == (1, 2, 8)
    for bad in ("nodes", "cores=1..4", "nodes=0..2", "nodes=a..b", "nodes=1..4*1"):
        with pytest.raises(ValueError):
            parse_sweep(bad)


def test_tiny_sweep_grows_until_redis_saturates(tmp_path: Path) -> None:
    # Redis at 100 µs a command: v4's ~5 commands a message cap it near 2,000 msgs/s,
    # above one gateway's knee (~900) and below what four gateways and workers carry.
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"redis_op": {"mean": 0.0001, "cv": 0.5}}))
    out = io.StringIO()
    result = run_sweep(
        SweepOptions(
            sweeps=[parse_sweep("nodes=1,4")],
            stages=("v4",),
            level_seconds=2.0,
            budget=600,
            tolerance=0.2,
            start=400.0,
            params=str(params),
            run_dir=tmp_path / "sweep",
        ),
        out=out,
    )
    pts = {p["count"]: p for p in result["points"]}
    one, four = pts[1], pts[4]
    assert one["knee"]["status"] == four["knee"]["status"] == "knee"
    assert four["knee"]["knee"] > 1.3 * one["knee"]["knee"]  # grows with nodes ...
    assert one["saturated"] == "front"  # ... while the gateway is the limit,
    assert four["saturated"] == "redis"  # until the shared Redis saturates
    assert four["utilisation"]["redis"] > 0.9
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    assert "Redis saturates first" in " ".join(result["sentences"])
    assert "msgs/s: push p99" in out.getvalue()  # progress, level by level
    # `imlab report` given the sweep folder (or a folder holding it) shows the figure.
    from reports.report import build_report

    report = build_report([tmp_path], tmp_path / "report")
    assert (tmp_path / "report" / "scaleout.png").stat().st_size > 0
    assert "Redis saturates first" in report.summary.read_text()


def test_imlab_sim_sweep_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imlab_app.cli import main

    argv = ["sim", "--sweep", "nodes=1", "--stage", "v2", "--level-seconds", "1",
            "--sweep-budget", "200", "--tolerance", "0.5", "--run-dir", str(tmp_path / "s"),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "v2 (one server) keeps up to" in capsys.readouterr().out
    assert main(["sim", "--users", "4"]) == 2  # one --stage without --sweep
    assert main(["sim", "--sweep", "cores=1..2"]) == 2
