"""Load tests end to end: real Locust runs (two worker processes, a few seconds, a few
users) against v1 and v2 through `imlab load`, judged by the checker, and the
checker's delivery figures recomputed here from the raw histories.

Also the plan's arithmetic (membership, schedules, churners) on its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imlab.experiment.scenarios import (
    ChurnSpec,
    PlanError,
    check_scenario,
    dm_partner,
    group_indices,
    user_names,
)
from imlab_app.cli import main as imlab_main
from loadtest.monitor import generator_verdict, schedule_lag, total_status
from loadtest.plan import LoadPlan, Schedule, StepShape
from loadtest.runner import LoadOptions, LoadResult, run_load

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

# ---------------------------------------------------------------- the plan


def test_groups_of_eight_by_index_and_a_lone_leftover_joins_the_last() -> None:
    assert group_indices("group", 16, 8) == [list(range(8)), list(range(8, 16))]
    assert group_indices("group", 17, 8)[-1] == list(range(8, 17))
    assert group_indices("burst", 12, 8) == [list(range(8)), list(range(8, 12))]
    assert group_indices("large-group", 300, 8) == [list(range(300))]


def test_dm_pairs_and_the_odd_one_out() -> None:
    assert [dm_partner(i, 4) for i in range(4)] == [1, 0, 3, 2]
    assert dm_partner(4, 5) == 0


def test_schedule_is_open_loop_slots() -> None:
    s = Schedule(base=100.0, period=0.5)
    assert s.slot_at_or_after(99.0) == 0
    assert s.slot_at_or_after(100.0) == 0
    assert s.slot_at_or_after(100.2) == 1
    assert s.time_of(3) == 101.5
    # slots 3, 4, 5 fall before 103.0 (slot 6 is at it)
    assert s.slots_between(3, 103.0) == 3 and s.slots_between(7, 103.0) == 0


def test_burst_members_share_their_group_phase_and_churners_are_exact() -> None:
    users = user_names(16, "t")
    groups = {"g1": users[:8], "g2": users[8:]}
    plan = LoadPlan(
        stage="v2",
        scenario="burst",
        endpoints=["http://x"],
        users=users,
        rate=2.0,
        duration=1.0,
        groups=groups,
        user_group={u: g for g, ms in groups.items() for u in ms},
        churn=ChurnSpec(fraction=0.25),
    )
    assert len({plan.phase(i) for i in range(8)}) == 1
    assert plan.phase(0) != plan.phase(8)
    assert all(0 <= plan.phase(i) < 0.5 for i in range(16))
    assert sum(plan.churns(i) for i in range(16)) == 4
    assert LoadPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_step_shape_and_scenario_checks() -> None:
    shape = StepShape(step=10, every=5.0)
    assert [shape.users_at(t, 25) for t in (0, 4.9, 5, 12, 99)] == [10, 10, 20, 25, 25]
    assert shape.ramp_seconds(25) == 10.0
    with pytest.raises(PlanError, match="needs groups"):
        check_scenario("group", 8, 8, {"dm"})
    with pytest.raises(PlanError, match="unknown scenario"):
        check_scenario("nope", 8, 8)


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


# ---------------------------------------------------------------- the generator's verdict


def test_schedule_lag_and_status_totals(tmp_path: Path) -> None:
    lines = [
        {"t": 10.0, "ev": "send", "intended": 10.0},
        {"t": 10.3, "ev": "send", "intended": 10.1},
        {"t": 10.4, "ev": "ack", "ok": True},
    ]
    (tmp_path / "history-a.jsonl").write_text(
        "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)
    )
    lag = schedule_lag([tmp_path / "history-a.jsonl"])
    assert lag["sends"] == 2 and lag["late_fraction"] == 0.5
    assert lag["max_ms"] == pytest.approx(200.0)
    total = total_status(
        [
            {"pid": 1, "started": 3, "lag_max_s": 0.1, "events": {"send": 5}},
            {"pid": 2, "started": 4, "lag_max_s": 0.3, "events": {"send": 1, "recv_push": 2}},
        ]
    )
    assert total["started"] == 7 and total["lag_max_s"] == 0.3
    assert total["events"] == {"send": 6, "recv_push": 2}


def test_verdict_blames_the_generator_only_on_its_own_evidence() -> None:
    idle = {"load_generator": {"busiest_process_pct_mean": 20.0}, "machine_pct": {"mean": 30}}
    busy = {"load_generator": {"busiest_process_pct_mean": 95.0}, "machine_pct": {"mean": 99}}
    late = {"p99_ms": 800.0}
    on_time = {"p99_ms": 2.0}
    assert not generator_verdict(idle, on_time)["generator_limited"]
    slow_stage = generator_verdict(idle, late)
    assert not slow_stage["generator_limited"] and "stage was the limit" in slow_stage["notes"][0]
    assert generator_verdict(busy, late)["generator_limited"]
    moved = generator_verdict(idle, on_time, {"started": 8, "stopped_early": 2}, planned=10)
    assert moved["generator_limited"] and len(moved["reasons"]) == 2
