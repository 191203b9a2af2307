"""Scaled-out shared services in the simulator: a Redis Cluster (`--redis-shards`, calls
placed on shards by their keys) and Kafka partition leaders spread over several brokers'
CPUs (`--kafka-leaders`); with one shard and one leader, everything is as before."""

from __future__ import annotations

import random
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import simpy
from simpy.events import Event

from sim.core import Deterministic
from sim.engine import Sampler
from sim.kafka import Broker
from sim.params import Dist
from sim.run import SimOptions, refusal_warning, run_sim
from sim.sample import kind_of
from sim.store import Store

OP = 0.0001
PIPELINED = 0.00001


def _store(env: simpy.Environment, shards: int) -> Store:
    rng = random.Random(1)
    return Store(
        env,
        link=0.00005,
        timeout=5.0,
        op=Sampler(Dist(OP), rng),
        pipelined_op=Sampler(Dist(PIPELINED), rng),
        shards=shards,
    )


def _calls(env: simpy.Environment, store: Store, calls: list[tuple[int, list[str]]]) -> None:
    """Each (ops, keys) call at its own moment, 10 ms apart (no queueing)."""

    def go(at: float, ops: int, keys: list[str]) -> Generator[Event, Any, None]:
        yield env.timeout(at)
        yield from store.round_trip(lambda: None, ops, keys=keys)

    for i, (ops, keys) in enumerate(calls):
        env.process(go(0.01 * i, ops, keys))
    env.run()


def _shard(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


KEYS = [f"group:g{i}" for i in range(400)]


def test_one_key_calls_spread_over_the_shards_as_their_keys_hash() -> None:
    env = simpy.Environment()
    store = _store(env, 4)
    _calls(env, store, [(1, [k]) for k in KEYS])
    expected = [sum(1 for k in KEYS if _shard(k, 4) == i) for i in range(4)]
    assert [s.jobs for s in store.shards] == expected
    assert all(n > 60 for n in expected)  # spread, not all on one shard
    assert [s.name for s in store.shards] == ["redis-0", "redis-1", "redis-2", "redis-3"]


def test_a_shards_utilisation_is_the_share_of_the_calls_on_its_keys() -> None:
    env = simpy.Environment()
    store = _store(env, 4)
    _calls(env, store, [(1, [k]) for k in KEYS])
    total = sum(s.busy for s in store.shards)
    assert total == pytest.approx(len(KEYS) * OP)
    for i, shard in enumerate(store.shards):
        share = sum(1 for k in KEYS if _shard(k, 4) == i) / len(KEYS)
        assert shard.busy / total == pytest.approx(share)


def test_a_multi_key_call_is_one_command_per_shard_touched() -> None:
    """An MGET over 8 routes: one MGET at each shard holding some of them; a pipeline of
    8 PUBLISHes: each shard serves the commands on its channels as one pipeline."""
    keys = [f"u{i:04d}-sim" for i in range(8)]
    touched = {_shard(k, 4) for k in keys}
    env = simpy.Environment()
    mget = _store(env, 4)
    _calls(env, mget, [(1, keys)])
    assert sum(s.jobs for s in mget.shards) == len(touched)
    assert sum(s.busy for s in mget.shards) == pytest.approx(len(touched) * OP)
    env = simpy.Environment()
    pipeline = _store(env, 4)
    _calls(env, pipeline, [(8, keys)])
    assert sum(s.jobs for s in pipeline.shards) == len(touched)
    assert sum(s.busy for s in pipeline.shards) == pytest.approx(
        len(touched) * OP + (8 - len(touched)) * PIPELINED
    )


def test_with_one_shard_keys_change_nothing() -> None:
    def done_times(keys: list[str]) -> list[float]:
        env = simpy.Environment()
        store = _store(env, 1)
        out: list[float] = []

        def go(at: float) -> Generator[Event, Any, None]:
            yield env.timeout(at)
            yield from store.round_trip(lambda: None, 3, keys=keys)
            out.append(env.now)

        for i in range(50):
            env.process(go(0.00001 * i))
        env.run()
        return out

    assert done_times([]) == done_times(["a", "b", "c"])
    assert [s.name for s in _store(simpy.Environment(), 1).shards] == ["redis"]


def test_partition_leaders_round_robin_and_a_record_costs_its_leaders_cpu() -> None:
    env = simpy.Environment()
    broker = Broker(env, random.Random(1), link=Deterministic(0.001),
                    record_cost=lambda: 0.001, leaders=3)  # fmt: skip
    topics = [broker.topic(f"im.group.g{i}", 1) for i in range(6)]
    assert [t.partitions[0].leader for t in topics] == [0, 1, 2, 0, 1, 2]

    def go(topic_index: int, at: float) -> Generator[Event, Any, None]:
        yield env.timeout(at)
        yield topics[topic_index].publish("k", 1)

    for n, t in enumerate([0, 3, 1, 0]):
        env.process(go(t, 0.01 * n))
    env.run()
    assert [c.jobs for c in broker.cpus] == [3, 1, 0]
    assert [c.name for c in broker.cpus] == ["kafka-0", "kafka-1", "kafka-2"]


def test_one_leader_is_the_one_broker_cpu_as_before() -> None:
    broker = Broker(simpy.Environment(), random.Random(1), record_cost=lambda: 0.001)
    assert broker.cpus == [broker.cpu] and broker.cpu.name == "kafka"


def test_a_sharded_v4_run_uses_every_shard_and_leader(tmp_path: Path) -> None:
    opts = SimOptions(stage="v4", users=400, rate=0.5, duration=4.0, gateways=4, workers=2,
                      redis_shards=4, kafka_leaders=2, trace="0", check=False, quiet=True,
                      run_dir=tmp_path / "r")  # fmt: skip
    result = run_sim(opts)
    pop = result.manifest["population"]
    assert pop["sends"]["acked_ok"] == pop["sends"]["attempted"] > 0
    assert pop["deliveries"]["lost"] == 0
    servers = pop["servers"]
    assert all(servers[f"redis-{i}"]["jobs"] > 0 for i in range(4))
    assert all(servers[f"kafka-{i}"]["jobs"] > 0 for i in range(2))
    assert pop["classes"]["redis"]["n"] == 4 and pop["classes"]["kafka"]["n"] == 2
    assert result.manifest["params"]["redis_shards"] == 4
    assert "ACKED OK" not in result.summary


def test_names_make_resource_classes() -> None:
    assert [kind_of(n) for n in ("gateway-12", "redis", "redis-3", "kafka-0")] == [
        "gateway",
        "redis",
        "redis",
        "kafka",
    ]


def test_a_run_whose_sends_mostly_failed_says_so_loudly() -> None:
    pop: dict[str, Any] = {
        "sends": {"attempted": 100, "acked_ok": 0, "acked_error": 90, "never_acked": 10,
                  "acked_error_by_code": {"unavailable": 90}},
        "classes": {"kafka": {"n": 1, "mean": 1.7, "max": 1.7},
                    "gateway": {"n": 64, "mean": 0.1, "max": 0.2}},
    }  # fmt: skip
    text = refusal_warning(pop)
    assert "ONLY 0 OF 100 SENDS ACKED OK" in text and "kafka 170%" in text
    pop["sends"]["acked_ok"] = 90
    assert refusal_warning(pop) == ""


def test_members_of_a_kind_get_its_even_share_of_the_population_however_uneven_the_sample() -> None:
    """gateway-0 sees three sampled jobs for each of gateway-1's; the population spreads
    evenly, so both serve about the same population jobs (scale 10: 9 per sampled job
    of the kind's mean); a lone server gets scale - 1 copies of each of its own."""
    from sim.engine import FifoServer
    from sim.sample import KindServer, LoadedServer, load_population

    a, b, lone = load_population(
        [FifoServer("gateway-0"), FifoServer("gateway-1"), FifoServer("redis")], 10.0, 0.01, 1
    )
    assert isinstance(a, KindServer) and isinstance(b, KindServer)
    assert type(lone) is LoadedServer
    for i in range(4000):
        t = i * 0.0025
        a.serve(t, 0.0001)
        if i % 3 == 0:
            b.serve(t, 0.0001)
        lone.serve(t, 0.0001)
    mean_sampled = (a.jobs + b.jobs) / 2
    for server in (a, b):
        assert server.bg_jobs == pytest.approx(9 * mean_sampled, rel=0.05)
    assert lone.bg_jobs == pytest.approx(9 * lone.jobs, rel=0.01)
