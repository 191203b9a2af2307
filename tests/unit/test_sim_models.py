"""The stage models under faults: the direction of every failure effect, per stage, as
the real code would show it, judged by the same checker as a real run; and exact
reproducibility from the seed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from sim.params import DEFAULTS, Params
from sim.run import SimOptions, run_sim

# How long a dead consumer keeps its partitions (the membership TTL and two beats).
HANDOVER_MS = Params().kafka_session_timeout * 1000


def simulate(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    """Run one small simulation into tmp/name; the checker's metrics plus `sim`."""
    opts = SimOptions(run_dir=tmp / name, quiet=True, **kw)
    return run_sim(opts).metrics


def test_v1_loses_deliveries_under_churn_and_v2_does_not(tmp_path: Path) -> None:
    load = {"scenario": "churn", "users": 40, "rate": 2.0, "duration": 20.0}
    v1 = simulate(tmp_path, "v1", stage="v1", **load)
    v2 = simulate(tmp_path, "v2", stage="v2", **load)
    # v1: pushes into silently dead connections were acked ok and are gone for good.
    assert v1["deliveries"]["lost"] > 0
    assert v1["sim"]["population"]["deliveries"]["pushes_into_dead_connections"] > 0
    assert v1["sends"]["acked_error_by_code"].get("recipient_offline", 0) > 0
    assert v1["deliveries"]["sync"] == 0
    # v2: the same drops, but everything acked is stored and caught up by sync.
    assert v2["deliveries"]["lost"] == 0
    assert v2["deliveries"]["sync"] > 0
    assert v2["deliveries"]["delivered"] == v2["deliveries"]["expected"]


@pytest.mark.parametrize("stage", ["v2", "v3", "v4"])
def test_redis_outage_refuses_or_delays_sends_and_loses_nothing(tmp_path: Path, stage: str) -> None:
    base = {"stage": stage, "scenario": "group", "users": 24, "duration": 20.0}
    calm = simulate(tmp_path, "calm", **base)
    hit = simulate(tmp_path, "outage", faults="redis-outage:10s@3s", **base)
    assert calm["sends"]["acked_error"] == 0
    # Calls to a paused Redis fail after redis-py's 5 s timeout: the client is told.
    assert hit["sends"]["acked_error_by_code"].get("unavailable", 0) > 0
    # And what does go through waits for Redis: the tail is seconds, not milliseconds.
    assert hit["latency_ms"]["push"]["max"] > 4000 > calm["latency_ms"]["push"]["max"]
    # Nothing acked ok is lost (v2's promise; v3/v4 consumers retry the record).
    assert hit["deliveries"]["lost"] == 0
    assert hit["anomalies"]["lost"] == 0


def _binomial_band(n: int, p: float, k: float = 4.0) -> tuple[float, float]:
    """n·p ± k standard deviations (k = 4: a false alarm in about 1 run of 16,000)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - k * sd, n * p + k * sd


def test_kafka_publish_loss_loses_acked_messages_in_v3_in_proportion(tmp_path: Path) -> None:
    p = 0.05
    m = simulate(
        tmp_path,
        "v3",
        stage="v3",
        scenario="group",
        users=80,
        rate=2.0,
        duration=20.0,
        faults=f"kafka-loss:{p}",
    )
    n = m["sends"]["acked_ok"]
    assert n == m["sends"]["attempted"] == 3200  # the producer cannot tell: all acked ok
    lost_msgs = m["deliveries"]["lost_messages"]
    lo, hi = _binomial_band(n, p)
    assert lo <= lost_msgs <= hi
    # Each lost message is lost for every one of its 7 recipients: nobody can sync it.
    assert m["deliveries"]["lost"] == 7 * lost_msgs
    assert m["sim"]["population"]["kafka"]["dropped"] == lost_msgs


def test_kafka_publish_loss_in_v4_is_acked_stored_and_only_found_by_sync(
    tmp_path: Path,
) -> None:
    p = 0.05
    m = simulate(
        tmp_path,
        "v4",
        stage="v4",
        scenario="group",
        users=80,
        rate=2.0,
        duration=20.0,
        faults=f"kafka-loss:{p}",
    )
    n = m["sends"]["acked_ok"]
    assert n == m["sends"]["attempted"] == 3200
    pop = m["sim"]["population"]
    never_pushed = pop["deliveries"]["acked_never_pushed"]
    lo, hi = _binomial_band(n, p)
    assert lo <= never_pushed <= hi
    assert never_pushed == pop["kafka"]["dropped"]
    # The gateway stored them before publishing: gap repair and catch-up find them.
    assert m["deliveries"]["lost"] == 0
    assert m["deliveries"]["sync"] >= 7 * never_pushed * 0.9


def test_v3_crash_moves_clients_and_loses_nothing_acked(tmp_path: Path) -> None:
    m = simulate(
        tmp_path,
        "v3",
        stage="v3",
        scenario="group",
        users=48,
        duration=20.0,
        faults="crash:server-1@5s",
    )
    pop = m["sim"]["population"]
    assert pop["clients"]["crashes"] == 1
    assert m["connections"]["connects"] > 48  # server-1's users came back elsewhere
    assert m["deliveries"]["lost"] == 0
    # The crashed server's partitions waited for the hand-over.
    assert m["latency_ms"]["push"]["max"] > 0.8 * HANDOVER_MS


def test_v4_worker_crash_delays_its_groups_by_the_session_timeout(tmp_path: Path) -> None:
    base = {"stage": "v4", "scenario": "group", "users": 48, "duration": 20.0}
    calm = simulate(tmp_path, "calm", **base)
    hit = simulate(tmp_path, "crash", faults="crash:worker-1@5s", **base)
    assert hit["deliveries"]["lost"] == 0
    assert calm["latency_ms"]["push"]["max"] < 100
    assert 0.8 * HANDOVER_MS < hit["latency_ms"]["push"]["max"] < HANDOVER_MS + 2500


@pytest.mark.parametrize("stage", ["v3", "v4"])
def test_a_tansu_restart_refuses_sends_and_acks_some_writes_it_then_loses(
    tmp_path: Path, stage: str
) -> None:
    m = simulate(
        tmp_path,
        stage,
        stage=stage,
        scenario="group",
        users=48,
        rate=2.0,
        duration=20.0,
        faults="broker-down:3s@5s",
        broker="tansu",
    )
    assert m["sends"]["acked_error_by_code"].get("unavailable", 0) > 0
    stale = m["sim"]["population"]["kafka"]["dropped"]  # acked in the stale-metadata window
    assert stale > 0
    if stage == "v3":  # never stored: lost
        assert m["deliveries"]["lost_messages"] >= stale
    else:  # stored at the gateway first: found by sync
        assert m["deliveries"]["lost"] == 0


@pytest.mark.parametrize("stage", ["v3", "v4"])
def test_a_kafka_restart_refuses_sends_and_loses_nothing(tmp_path: Path, stage: str) -> None:
    kw: dict[str, Any] = {"stage": stage, "scenario": "group", "users": 48, "rate": 2.0,
                          "duration": 20.0}  # fmt: skip
    whole = simulate(tmp_path, f"{stage}-1", faults="broker-down:3s@5s", **kw)
    assert whole["sends"]["acked_error_by_code"].get("unavailable", 0) > 0
    assert whole["sim"]["population"]["kafka"]["dropped"] == 0
    assert whole["deliveries"]["lost"] == 0
    assert whole["sim"]["population"]["kafka"]["lost_in_outages"] == 0
    # one broker of three: unavailable only for the failover, and nothing lost
    one = simulate(tmp_path, f"{stage}-3", faults="broker-kill:3s@5s", brokers=3, **kw)
    [(start, end)] = one["sim"]["population"]["kafka"]["outages"]
    assert end - start == pytest.approx(DEFAULTS.kafka_failover)
    assert one["deliveries"]["lost"] == 0


def test_a_seed_fixes_the_run_to_the_byte(tmp_path: Path) -> None:
    kw = {"stage": "v4", "scenario": "churn", "users": 24, "duration": 8.0}
    faults = "kafka-loss:0.02,redis-outage:2s@3s"
    a = simulate(tmp_path, "a", faults=faults, **kw)
    b = simulate(tmp_path, "b", faults=faults, **kw)
    c = simulate(tmp_path, "c", faults=faults, seed=2, **kw)
    history = [(tmp_path / n / "history.jsonl").read_bytes() for n in "abc"]
    assert history[0] == history[1] != history[2]

    def stable(m: dict[str, Any]) -> str:
        m = {k: v for k, v in m.items() if k not in ("checker", "run", "sim")}
        return json.dumps(m, sort_keys=True)

    assert stable(a) == stable(b) != stable(c)
    assert a["sim"]["population"] == b["sim"]["population"]


def test_a_traced_sample_is_complete_and_the_population_is_counted_whole(
    tmp_path: Path,
) -> None:
    m = simulate(tmp_path, "s", stage="v2", scenario="group", users=400, duration=5.0, trace="3")
    trace = m["sim"]["trace"]
    assert trace["conversations"] == 3 and trace["users"] == 24 and trace["of_users"] == 400
    # The checker saw only the traced groups, completely: nothing unexpected, nothing lost.
    assert m["sends"]["attempted"] == 24 * 5
    assert m["deliveries"]["expected"] == m["deliveries"]["delivered"] == 24 * 5 * 7
    assert m["anomalies"]["unexpected"] == 0
    pop = m["sim"]["population"]
    assert pop["sends"]["attempted"] == 400 * 5
    assert pop["deliveries"]["expected"] == pop["deliveries"]["delivered"] == 400 * 5 * 7
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(manifest["groups"]) == 3


def test_a_full_redis_pool_fails_calls_at_once_and_the_run_goes_on(tmp_path: Path) -> None:
    from sim.params import DEFAULTS, Dist

    params = tmp_path / "slow-redis.json"
    DEFAULTS.with_(redis_op=Dist(0.004), redis_pool=4).save(params)
    m = simulate(
        tmp_path, "v4", stage="v4", scenario="group", users=96, rate=2.0, duration=5.0,
        params=str(params),
    )  # fmt: skip
    pop = m["sim"]["population"]
    assert m["sends"]["acked_error_by_code"].get("unavailable", 0) > 0
    assert pop["clients"]["connects"] == 96
    assert pop["clients"]["redis_pool_exhausted"] > 0
