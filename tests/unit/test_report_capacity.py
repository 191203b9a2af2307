"""The report's capacity figure, from synthetic ladders laid out as `imlab capacity
--stages` leaves them (one folder per stage, a capacity.json beside its level runs):
every number printed is the one in the runs' metrics.json (or the ladder's
capacity.json), and the caption names each stage's knee and its generator-bound levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reports.figures import Figure
from reports.numbers import fmt, plain
from reports.report import Report, build_report
from tests.unit.test_report import check_every_number, make_run

USERS = 16


def ladder(
    root: Path, stage: str, rates: list[float], *, capacity: float, bound: float | None = None
) -> Path:
    """A capacity folder: one run per rate (sends/s per user), `bound` generator-bound."""
    folder = root / stage
    for i, rate in enumerate(rates):
        run = make_run(folder, f"L{i + 1}-{USERS * rate:g}", stage=stage, users=USERS,
                       rate=rate, duration=8.0, capacity=capacity, seed=i)  # fmt: skip
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["params"]["offered_sends_per_s"] = USERS * rate
        limited = rate == bound
        manifest["load_generator"] = {
            "verdict": {"generator_limited": limited, "reasons": ["busy"] if limited else []}
        }
        (run / "manifest.json").write_text(json.dumps(manifest))
    summary: dict[str, Any] = {"stage": stage, "scenario": "group", "threshold_ms": 100.0}
    (folder / "capacity.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Report:
    root = tmp_path_factory.mktemp("capacity-all")
    ladder(root, "v1", [1.0, 2.0, 4.0, 8.0], capacity=40.0)  # knee at 32, fails from 64
    ladder(root, "v2", [1.0, 2.0, 4.0], capacity=1e9, bound=4.0)  # the generator gave out
    ladder(root, "v3", [1.0, 2.0], capacity=1e9)  # held at every level
    (root / "capacity-all.json").write_text("{}")  # what the command leaves beside them
    return build_report([root], tmp_path_factory.mktemp("report"))


def test_every_capacity_number_is_traced(built: Report) -> None:
    assert {r.stage for r in built.runs} == {"v1", "v2", "v3"} and len(built.runs) == 9
    assert check_every_number(built) > 50
    assert (built.out / "capacity-group.png").read_bytes()[:4] == b"\x89PNG"


def _metrics(built: Report, stage: str, name: str) -> dict[str, Any]:
    run = next(r for r in built.runs if r.stage == stage and r.path.name == name)
    return json.loads((run.path / "metrics.json").read_text())


def test_the_caption_names_each_knee_and_the_generator_bound_levels(built: Report) -> None:
    figs = [i for i in built.items if isinstance(i, Figure) and i.section == "capacity"]
    assert [f.title for f in figs] == ["Capacity: group"]
    text = plain(figs[0].caption)
    assert "push p99 under 100 ms and nothing lost" in text

    knee, past = _metrics(built, "v1", "L2-32"), _metrics(built, "v1", "L3-64")
    assert knee["latency_ms"]["push"]["p99"] < 100 <= past["latency_ms"]["push"]["p99"]
    expected = (
        f"v1: knee at 32 msgs/s (push p99 {fmt(knee['latency_ms']['push']['p99'])} ms, "
        f"accepted {fmt(knee['throughput']['accepted_sends_per_s'])}/s); "
        f"at 64 msgs/s push p99 was {fmt(past['latency_ms']['push']['p99'])} ms"
    )
    assert expected in text

    held = _metrics(built, "v2", "L2-32")
    assert (
        "v2: generator-bound at 64 msgs/s, where the load generator, not the stage, was the "
        f"limit; the stage held up to 32 msgs/s (push p99 {fmt(held['latency_ms']['push']['p99'])}"
        " ms), so its knee is at least that" in text
    )
    top = _metrics(built, "v3", "L2-32")
    assert "v3: no knee within range, every level held up to 32 msgs/s (push p99 " in text
    assert fmt(top["throughput"]["accepted_sends_per_s"]) in text
    assert "Generator-bound levels (crosses; " in text and "manifest): v2 at 64 msgs/s." in text
    assert "No v4 or v5 run with a capacity ladder here." in text


def test_ladders_have_findings_and_no_second_throughput_figure(built: Report) -> None:
    summary = built.summary.read_text(encoding="utf-8")
    findings = summary[summary.index("## Findings") : summary.index("## Main table")]
    assert "- Capacity, scenario group, v1: knee at 32 msgs/s" in findings
    assert "- Capacity, scenario group, v2: generator-bound at 64 msgs/s" in findings
    # The ladders' runs are not judged a second time by the 90 %-accepted rule.
    assert "kept up" not in findings and "fell behind" not in findings
    assert not [i for i in built.items if i.section == "throughput"]
    assert "## Capacity: each stage's knee" in summary


def test_no_level_generator_bound_is_said(tmp_path: Path) -> None:
    ladder(tmp_path / "all", "v2", [1.0, 2.0], capacity=1e9)
    built = build_report([tmp_path / "all"], tmp_path / "report")
    text = plain(
        next(i for i in built.items if isinstance(i, Figure) and i.section == "capacity").caption
    )
    assert "No level was generator-bound" in text
    assert "No v1, v3, v4 or v5 run with a capacity ladder here." in text
