"""`imlab sim` and `imlab calibrate` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imlab_app.cli import main


def test_imlab_sim_writes_a_judged_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["sim", "--stage", "v4", "--scenario", "group", "--users", "32", "--gateways", "3",
            "--workers", "2", "--duration", "5", "--faults", "kafka-loss:0.01",
            "--run-dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "simulated" in out and "SimPy events" in out and "wall" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stage"] == "v4" and manifest["kind"] == "sim"
    assert manifest["params"]["nodes"] == 3 and manifest["params"]["workers"] == 2
    assert manifest["faults"][0]["kind"] == "kafka-loss"
    # A run-long fault spans the send window, as a real run records it, not the drain.
    assert manifest["faults"][0]["start"] == manifest["started_at"]
    assert manifest["faults"][0]["end"] == manifest["ended_at"] < manifest["drain_end"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sends"]["attempted"] == 32 * 5
    assert metrics["sim"]["wall_seconds"] > 0 and metrics["sim"]["events_per_s"] > 0


def test_bad_options_exit_2_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["sim", "--stage", "v1", "--scenario", "group", "--run-dir", str(tmp_path / "a")]) == 2
    )
    assert "needs groups" in capsys.readouterr().err
    bad_fault = [
        "sim",
        "--stage",
        "v2",
        "--faults",
        "redis-outage:5s",
        "--run-dir",
        str(tmp_path / "b"),
    ]
    assert main(bad_fault) == 2
    assert "@<start>" in capsys.readouterr().err
    crash = [
        "sim",
        "--stage",
        "v2",
        "--faults",
        "crash:worker-7@1s",
        "--run-dir",
        str(tmp_path / "c"),
    ]
    assert main(crash) == 2
    assert "no process 'worker-7'" in capsys.readouterr().err


def test_calibrate_refuses_a_simulated_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["sim", "--stage", "v2", "--users", "16", "--duration", "2", "--quiet",
                 "--run-dir", str(run)]) == 0  # fmt: skip
    out = tmp_path / "params.json"
    assert main(["calibrate", str(run), "-o", str(out)]) == 2
    assert "simulated run" in capsys.readouterr().err
    assert not out.exists()
