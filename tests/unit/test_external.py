"""`imlab load --url`: a server imlab did not start gets the same load, and no fault
that only a stage imlab runs can take."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from imlab.experiment.scenarios import PlanError
from loadtest.external import ExternalStage
from loadtest.runner import LoadOptions, LoadRun


def test_an_external_server_is_loaded_where_it_is(tmp_path: Path) -> None:
    opts = LoadOptions(stage="v1", scenario="dm", users=4, urls=["http://127.0.0.1:9"],
                       external_pids=[1], faults="churn:0.5", run_dir=tmp_path / "run")  # fmt: skip
    run = LoadRun(opts, io.StringIO())
    assert isinstance(run.cluster, ExternalStage)
    assert run.cluster.endpoints == ["http://127.0.0.1:9"]
    assert [s.pid for s in run.cluster.services()] == [1]
    assert run.cluster.manifest()["external"] is True


def test_faults_on_the_servers_need_a_stage_imlab_starts(tmp_path: Path) -> None:
    opts = LoadOptions(stage="v1", scenario="dm", users=4, urls=["http://127.0.0.1:9"],
                       faults="crash:server-0@1s", run_dir=tmp_path / "run")  # fmt: skip
    with pytest.raises(PlanError, match="not --url"):
        LoadRun(opts, io.StringIO())
