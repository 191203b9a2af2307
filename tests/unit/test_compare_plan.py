"""The comparison's matrix: which cases `imlab compare` plans, from the stage registry."""

from __future__ import annotations

from imlab import stages
from imlab_app.compare import plan_cases


def test_quick_matrix_covers_every_stage_real_and_simulated() -> None:
    cases = plan_cases(quick=True)
    assert {c.stage for c in cases} == {"v1", "v2", "v3", "v4"}
    assert {c.kind for c in cases} == {"real", "sim"}
    assert all(any(c.faults for c in cases if c.stage == s) for s in ("v1", "v2", "v3", "v4"))


def test_every_registered_stage_declares_a_front_role_and_its_faults() -> None:
    for info in stages.registry().values():
        assert info.front.client_facing and info.front.count >= 1
        assert info.faults_quick and info.faults_full
        assert info.needs <= {"redis", "kafka"}
