"""The comparison's matrix: which cases `imlab compare` plans, from the stage registry."""

from __future__ import annotations

from pathlib import Path

from imlab import stages
from imlab_app.compare import SERVICE_FAULTS, BrokerChoice, SharedServices, plan_cases


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
