"""The load plan's arithmetic (membership, schedules, churners, scenario checks) and the
load generator's self-judgement (schedule lag, status totals, the verdict), on their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imlab.experiment.scenarios import (
    ChurnSpec,
    PlanError,
    check_scenario,
    dm_partner,
    group_indices,
    user_names,
)
from loadtest.monitor import generator_verdict, schedule_lag, total_status
from loadtest.plan import LoadPlan, Schedule, StepShape

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
