"""The comparison's matrix: which cases `imlab compare` plans, from the stage registry."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imlab import stages
from imlab_app import compare
from imlab_app.compare import SERVICE_FAULTS, BrokerChoice, Case, SharedServices, plan_cases


def test_quick_matrix_covers_every_stage_real_and_simulated() -> None:
    cases = plan_cases(quick=True)
    assert {c.stage for c in cases} == set(stages.names())
    assert {"v1", "v2", "v3", "v4", "v5"} <= set(stages.names())
    assert {c.kind for c in cases} == {"real", "sim"}
    assert all(any(c.faults for c in cases if c.stage == s) for s in stages.names())


def test_every_registered_stage_declares_a_front_role_and_its_faults() -> None:
    for info in stages.registry().values():
        assert info.front.client_facing and info.front.count >= 1
        assert info.faults_quick and info.faults_full
        assert info.needs <= set(stages.SERVICES)


def test_quick_runs_each_stage_at_three_loads_and_shares_the_broker_where_safe(
    tmp_path: Path,
) -> None:
    cases = plan_cases(quick=True)
    for stage in stages.names():
        for kind in ("real", "sim"):
            rates = {c.rate for c in cases if (c.stage, c.kind) == (stage, kind) and not c.faults}
            assert len(rates) >= 3, (stage, kind, rates)
    shared = SharedServices(tmp_path, BrokerChoice())
    sharing = {(c.stage, c.faults.split(":")[0]) for c in cases if shared.wants(c)}
    # v3/v4 real runs share one broker, except a run whose fault strikes the broker or Redis.
    assert ("v3", "") in sharing and ("v4", "") in sharing
    assert not {f for _s, f in sharing} & SERVICE_FAULTS
    assert all(s in ("v3", "v4") for s, _f in sharing)


def test_a_real_run_starts_while_the_one_before_finishes_but_sends_only_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline of `imlab compare`: the next real case starts its stage and connects
    once the previous one's drain is over, and its send window opens only after the
    previous case ended (verdict included), so no measured window overlaps another run."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def note(what: str, run_dir: Path) -> None:
        with lock:
            events.append((what, run_dir.name))

    def fake_run_case(case: Case, run_dir: Path, *args: Any) -> Path:
        hooks = args[3] if len(args) > 3 else None
        note("start", run_dir)
        if hooks is not None:
            time.sleep(0.05)
            note("connected", run_dir)
            hooks.ready()
        note("window", run_dir)
        time.sleep(0.05)
        if hooks is not None:
            hooks.measured()
        time.sleep(0.1)  # the final catch-up, stopping, the verdict
        note("end", run_dir)
        return run_dir

    monkeypatch.setattr(compare, "run_case", fake_run_case)
    cases = plan_cases(quick=True, only=["v1"])
    shared = SharedServices(tmp_path / "shared", BrokerChoice())
    results = compare.run_cases(cases, tmp_path / "runs", 1, io.StringIO(), None, shared)
    assert all(r["ok"] for r in results) and len(results) == len(cases)
    real = [Path(r["run_dir"]).name for r in results if r["case"]["kind"] == "real"]
    at = {e: i for i, e in enumerate(events)}
    for a, b in itertools.pairwise(real):
        assert at[("start", b)] < at[("end", a)], "the next run did not start early"
        assert at[("window", b)] > at[("end", a)], "two runs were measured at once"
