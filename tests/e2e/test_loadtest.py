"""Load tests end to end: real Locust runs (two worker processes, a few seconds, a few
users) against v1 and v2 through `imlab load`, judged by the checker, and the
checker's delivery figures recomputed here from the raw histories; v1's churn run is
also given to v1's model, which must lose about what the stage lost.
(The plan's arithmetic on its own is in tests/unit/test_plan.py.)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imlab_app.cli import main as imlab_main
from loadtest.runner import LoadOptions, LoadResult, run_load
from tests.twins import near, said, twin_metrics

MANIFEST_KEYS = {
    "stage",
    "scenario",
    "params",
    "started_at",
    "ended_at",
    "drain_end",
    "groups",
    "faults",
    "machine",
    "versions",
    "load_generator",
}
PROCESSES = 2

# ---------------------------------------------------------------- real runs


def _events(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(run_dir.glob("history*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _raw_accounting(run_dir: Path) -> dict[str, Any]:
    """Deliveries recomputed from the raw histories, independently of the checker."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    events = _events(run_dir)
    sends = {e["msg"]: e for e in events if e["ev"] == "send"}
    acked_ok = {e["msg"] for e in events if e["ev"] == "ack" and e["ok"]}
    errors: dict[str, int] = {}
    for e in events:
        if e["ev"] == "ack" and not e["ok"]:
            errors[e["err"]] = errors.get(e["err"], 0) + 1
    seen = {(e["user"], e["msg"]) for e in events if e["ev"] == "recv"}
    expected = missing = 0
    for msg in acked_ok:
        sender, conv = sends[msg]["user"], sends[msg]["conv"]
        if conv.startswith("dm:"):
            members = conv.split(":")[1:]
        else:
            members = manifest["groups"][conv.removeprefix("group:")]
        for r in members:
            if r != sender:
                expected += 1
                missing += (r, msg) not in seen
    return {
        "attempted": len(sends),
        "acked_ok": len(acked_ok),
        "errors": errors,
        "expected": expected,
        "missing": missing,
        "recv_events": sum(1 for e in events if e["ev"] == "recv"),
    }


def _load(tmp: Path, stage: str, scenario: str, **kw: Any) -> LoadResult:
    opts = LoadOptions(
        stage=stage,
        scenario=scenario,
        processes=PROCESSES,
        run_dir=tmp / f"{stage}-{scenario}",
        max_drain=10.0,
        quiet=True,
        **kw,
    )
    return run_load(opts)


CHURN = {"users": 8, "rate": 5.0, "duration": 5.0, "churn_online": 1.0, "churn_offline": 0.5}


@pytest.fixture(scope="module")
def v1_churn(tmp_path_factory: pytest.TempPathFactory) -> LoadResult:
    return _load(tmp_path_factory.mktemp("load"), "v1", "churn", **CHURN)


@pytest.fixture(scope="module")
def v2_churn(tmp_path_factory: pytest.TempPathFactory) -> LoadResult:
    return _load(tmp_path_factory.mktemp("load"), "v2", "churn", **CHURN)


@pytest.fixture(scope="module")
def v2_group_cli(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, str]]:
    """A v2 group run through the `imlab load` command line, with a step shape."""
    run_dir = tmp_path_factory.mktemp("load") / "v2-group"
    argv = ["load", "--stage", "v2", "--scenario", "group", "--users", "16", "--rate", "2"]
    argv += ["--duration", "3", "--step-users", "8", "--step-every", "2", "--quiet"]
    argv += ["--processes", str(PROCESSES), "--run-dir", str(run_dir)]
    capture = run_dir.parent / "stdout.txt"
    with capture.open("w") as out, contextlib.redirect_stdout(out):
        code = imlab_main(argv)
    assert code == 0
    yield run_dir, capture.read_text()


def _assert_complete(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest) >= MANIFEST_KEYS
    assert manifest["started_at"] < manifest["ended_at"] <= manifest["drain_end"]
    assert manifest["faults"] == []
    assert manifest["machine"]["cpu_count"]
    gen = manifest["load_generator"]
    assert gen["processes"] == PROCESSES and gen["cpu"]["processes"] >= PROCESSES
    assert gen["lag"]["sends"] > 0 and "generator_limited" in gen["verdict"]
    workers = list(run_dir.glob("history-w*.jsonl"))
    assert len(workers) == PROCESSES, workers
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "metrics.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "logs" / "locust.log").exists()
    assert (run_dir / "logs" / "server-0.log").exists()
    status = gen["status"]
    assert status["finished"] == status["started"] == manifest["params"]["users"]
    assert status["final_synced"] == status["ever_connected"] == manifest["params"]["users"]
    assert status["stopped_early"] == status["surplus"] == 0
    return manifest


def _assert_accounted(result_metrics: dict[str, Any], raw: dict[str, Any]) -> None:
    sends, dl = result_metrics["sends"], result_metrics["deliveries"]
    assert sends["attempted"] == raw["attempted"] > 0
    assert sends["acked_ok"] == raw["acked_ok"] > 0
    assert sends["acked_error_by_code"] == raw["errors"]
    assert sends["never_acked"] == 0
    assert dl["expected"] == raw["expected"]
    assert dl["lost"] == raw["missing"]
    assert dl["delivered"] == dl["push"] + dl["sync"] == raw["expected"] - raw["missing"]
    assert dl["duplicated"] == dl["unexpected"] == dl["unjudged"] == 0


def test_v1_churn_loses_what_its_histories_show_missing(v1_churn: LoadResult) -> None:
    manifest = _assert_complete(v1_churn.run_dir)
    raw = _raw_accounting(v1_churn.run_dir)
    _assert_accounted(v1_churn.metrics, raw)
    status = manifest["load_generator"]["status"]
    assert status["silent_drops"] > 0 and status["dropped_pushes"] > 0
    # v1 stores nothing: a push into a dead connection is gone, nothing comes by sync
    assert raw["missing"] > 0
    assert v1_churn.metrics["anomalies"]["lost"] == raw["missing"]
    assert v1_churn.metrics["deliveries"]["sync"] == 0
    # a cleanly gone recipient is refused, not lost
    assert set(raw["errors"]) <= {"recipient_offline"}


def test_the_model_of_v1_churn_loses_what_the_stage_lost(
    v1_churn: LoadResult, tmp_path: Path
) -> None:
    """The same churn (one seed gives the model and the load tool the same drops) costs
    v1's model and v1 about the same messages: the loss count within 20 % or 5."""
    real = v1_churn.metrics
    sim = twin_metrics(v1_churn.run_dir, tmp_path / "twin")
    text = said(real, sim)
    print(text)
    assert real["deliveries"]["lost"] > 0, text
    assert near(sim["deliveries"]["lost"], real["deliveries"]["lost"]), text
    assert near(sim["sends"]["acked_error"], real["sends"]["acked_error"]), text
    assert near(sim["sends"]["attempted"], real["sends"]["attempted"], rel=0.05), text


def test_v2_churn_recovers_everything_by_sync(v2_churn: LoadResult) -> None:
    manifest = _assert_complete(v2_churn.run_dir)
    raw = _raw_accounting(v2_churn.run_dir)
    _assert_accounted(v2_churn.metrics, raw)
    assert manifest["load_generator"]["status"]["dropped_pushes"] > 0
    assert raw["missing"] == 0
    assert v2_churn.metrics["anomalies"]["lost"] == 0
    assert v2_churn.metrics["deliveries"]["sync"] > 0
    assert raw["errors"] == {}


def test_v2_group_through_the_cli(v2_group_cli: tuple[Path, str]) -> None:
    run_dir, stdout = v2_group_cli
    manifest = _assert_complete(run_dir)
    assert manifest["params"]["shape"] == {"step": 8, "every": 2.0}
    assert len(manifest["groups"]) == 2
    assert all(len(members) == 8 for members in manifest["groups"].values())
    raw = _raw_accounting(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _assert_accounted(metrics, raw)
    assert raw["missing"] == 0 and metrics["summary"]["clean"]
    assert "stage / scenario" in stdout and "load generator" in stdout


def test_a_locust_warm_up_is_sent_and_left_out_of_the_history(tmp_path: Path) -> None:
    """`--warmup` with Locust: the warm-up's messages take the first seqs and leave no
    event, so the checker judges the window alone and finds it clean."""
    result = run_load(
        LoadOptions(
            stage="v2",
            scenario="dm",
            users=8,
            rate=4.0,
            duration=2.0,
            warmup=1.5,
            processes=1,
            run_dir=tmp_path / "run",
            quiet=True,
        )
    )
    m = result.metrics
    assert m["summary"]["clean"], result.summary
    assert m["deliveries"]["delivered"] == m["deliveries"]["expected"] > 0
    events = _events(tmp_path / "run")
    assert not any(str(e.get("msg", "")).startswith("warm-") for e in events)
    seqs = [e["seq"] for e in events if e["ev"] == "ack"]
    assert seqs and min(seqs) > 1  # the warm-up's messages came first
    assert min(e["intended"] for e in events if e["ev"] == "send") >= result.manifest["started_at"]
    status = result.manifest["load_generator"]["status"]
    assert status["warmup_sends"] >= 8 and result.manifest["params"]["warmup"] == 1.5
