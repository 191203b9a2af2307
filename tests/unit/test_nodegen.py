"""The parts the runner writes for the Node.js generator (loadtest/nodegen.py): each
user's target, conversation, home endpoint, schedule phase and token agree with what the
Locust users derive from the same plan; what gen.js does not play is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imlab.auth import verify_token
from imlab.client.core import ordered_endpoints
from imlab.experiment.scenarios import ChurnSpec, user_names
from loadtest.nodegen import parts, write_parts
from loadtest.plan import LoadPlan, StepShape

SECRET = "s" * 32


def plan(stage: str, scenario: str, **kw: object) -> LoadPlan:
    users = user_names(9, "t")
    groups = {"g1": users[:4], "g2": users[4:]} if scenario == "group" else {}
    return LoadPlan(
        stage=stage,
        scenario=scenario,
        endpoints=["http://a:1", "http://b:2"],
        users=users,
        rate=4.0,
        duration=2.0,
        groups=groups,
        user_group={u: g for g, ms in groups.items() for u in ms},
        **kw,  # type: ignore[arg-type]
    )


def test_dm_parts_pair_users_as_the_plan_does() -> None:
    pl = plan("v1", "dm")
    got = parts(pl, SECRET)
    assert [x["index"] for x in got] == list(range(9))
    for i, part in enumerate(got):
        to, group = pl.target(i)
        assert part["to"] == to and part["group"] is None and group is None
        assert part["conv"] == "dm:" + ":".join(sorted((part["user"], to or "")))
        assert part["phase"] == pl.phase(i) and 0 <= part["phase"] < 1 / pl.rate
        assert part["url"] == ordered_endpoints(pl.endpoints, part["user"])[0]
        assert part["token"] is None  # v1 takes the user's name
    assert got[8]["to"] == got[0]["user"]  # the odd one out talks to user 0


def test_group_parts_carry_the_group_and_a_token_where_the_stage_needs_one() -> None:
    pl = plan("v4", "group")
    got = parts(pl, SECRET)
    assert {x["group"] for x in got} == {"g1", "g2"}
    assert all(x["conv"] == f"group:{x['group']}" and x["to"] is None for x in got)
    assert verify_token(got[0]["token"], SECRET).user == got[0]["user"]


def test_what_gen_js_does_not_play_is_refused(tmp_path: Path) -> None:
    for bad in (
        plan("v2", "dm", churn=ChurnSpec(fraction=0.5)),
        plan("v2", "dm", shape=StepShape(2, 1.0)),
    ):
        with pytest.raises(ValueError, match="use --generator locust"):
            write_parts(bad, tmp_path, SECRET, 100.0)
    path = write_parts(plan("v2", "dm"), tmp_path, SECRET, 100.0)
    doc = json.loads(path.read_text())
    assert doc["rate"] == 4.0 and doc["spawn_rate"] == 100.0 and len(doc["users"]) == 9


def test_a_negative_warm_up_and_an_unknown_generator_are_refused(
    tmp_path: Path,
) -> None:
    import io

    from imlab.experiment.scenarios import PlanError
    from loadtest.runner import LoadOptions, LoadRun

    for opts, why in (
        (LoadOptions(stage="v1", scenario="dm", warmup=-1.0), "zero seconds or more"),
        (LoadOptions(stage="v1", scenario="dm", generator="k6"), "unknown generator"),
    ):
        opts.run_dir = tmp_path / why.replace(" ", "-")
        with pytest.raises(PlanError, match=why):
            LoadRun(opts, io.StringIO())
