"""The knee finder on synthetic ladders, and the generator's verdict on its own evidence
(the run of issue 13 that was wrongly blamed on the stage)."""

from __future__ import annotations

from typing import Any

from loadtest.monitor import generator_verdict
from reports.knee import Level, find_knee, past_knee


def _ladder(*rungs: tuple[float, float, int]) -> list[Level]:
    return [Level(offered, p99, lost) for offered, p99, lost in rungs]


def test_a_clear_knee_is_the_last_level_under_the_threshold() -> None:
    levels = _ladder((250, 5, 0), (500, 9, 0), (1000, 40, 0), (2000, 800, 0), (4000, 5000, 3))
    knee = find_knee(levels)
    assert knee.status == "knee" and knee.knee == 1000 and knee.first_failing == 2000
    assert "knee at 1000 msgs/s" in knee.sentence()
    assert past_knee(levels, 100.0) and not past_knee(levels[:4], 100.0)


def test_a_loss_fails_a_level_however_fast_it_was() -> None:
    knee = find_knee(_ladder((100, 3, 0), (200, 4, 1), (400, 5, 2)))
    assert knee.status == "knee" and knee.knee == 100


def test_no_knee_within_range_when_every_level_holds() -> None:
    knee = find_knee(_ladder((100, 3, 0), (200, 4, 0), (400, 7, 0)))
    assert knee.status == "no knee within range" and knee.knee == 400
    assert knee.sentence().startswith("no knee within range")


def test_below_range_when_the_first_levels_fail() -> None:
    knee = find_knee(_ladder((100, 300, 0), (200, 900, 0)))
    assert knee.status == "below range" and knee.knee is None and knee.first_failing == 100


def test_a_noisy_level_between_passing_ones_is_not_the_knee() -> None:
    levels = _ladder((100, 3, 0), (200, 140, 0), (400, 8, 0), (800, 300, 0), (1600, 900, 0))
    knee = find_knee(levels, threshold_ms=100.0)
    assert knee.status == "knee" and knee.knee == 400 and knee.noisy == [200]
    assert "noisy" in knee.sentence()
    # a lucky level beyond two failures in a row is past the knee and ignored
    late_fluke = _ladder((100, 3, 0), (200, 400, 0), (400, 500, 0), (800, 9, 0))
    assert find_knee(late_fluke).knee == 100


def test_a_generator_bound_level_ends_the_ladder_and_blames_the_generator() -> None:
    levels = [
        Level(1000, 4, 0),
        Level(2000, 9, 0),
        Level(4000, 900, 0, generator_bound=True),
        Level(8000, 3000, 0),
    ]
    knee = find_knee(levels)
    assert knee.status == "generator-bound" and knee.knee == 2000 and knee.first_failing == 4000
    assert "not the stage" in knee.sentence() and knee.judged == 3
    assert past_knee(levels[:3], 100.0)


# ---------------------------------------------------------------- the generator's verdict


def _cpu(
    gen_busiest: float, gen_total: float, stage_busiest: float, machine: float
) -> dict[str, Any]:
    return {
        "load_generator": {"busiest_process_pct_mean": gen_busiest, "total_pct_mean": gen_total},
        "stage": {"busiest_process_pct_mean": stage_busiest, "total_pct_mean": stage_busiest},
        "machine_pct": {"mean": machine},
    }


def test_issue_13s_run_is_generator_bound() -> None:
    """v1 at 3,000 msgs/s: sends 205 ms late at the median, Locust 61% a process (122% in
    all), the stage at 50%: an independent generator saw push p99 16 ms there."""
    verdict = generator_verdict(_cpu(61, 122, 50, 86), {"p50_ms": 205.0, "p99_ms": 1007.0})
    assert verdict["generator_limited"]
    assert "half the sends" in verdict["reasons"][0]
    assert not any("stage was the limit" in n for n in verdict["notes"])


def test_a_busy_stage_with_late_sends_is_the_stage_s_limit() -> None:
    verdict = generator_verdict(_cpu(61, 122, 97, 99), {"p50_ms": 205.0, "p99_ms": 1007.0})
    assert not verdict["generator_limited"]
    assert any("stage was the limit" in n for n in verdict["notes"])


def test_late_only_in_the_tail_does_not_blame_the_generator() -> None:
    verdict = generator_verdict(_cpu(61, 122, 40, 80), {"p50_ms": 3.0, "p99_ms": 400.0})
    assert not verdict["generator_limited"]
