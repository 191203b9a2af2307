"""The Kafka-like log: offsets, long-poll fetches, lag, drops, broker loss, consumer groups."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import pytest
import simpy
from simpy.events import Event

from sim.core import UNAVAILABLE, Deterministic
from sim.kafka import DROPPED, Broker, PublishResult, Record
from sim.kafka_group import Consumer, ConsumerGroup


def _broker(env: simpy.Environment, **kw: Any) -> Broker:
    return Broker(env, random.Random(1), link=Deterministic(0.001), **kw)


def _publish_at(
    env: simpy.Environment, broker: Broker, at: float, key: str, value: int, out: list[Any]
) -> None:
    def go() -> Generator[Event, Any, None]:
        yield env.timeout(at)
        out.append((yield broker.topic("t").publish(key, value)))

    env.process(go())


def _consume(
    env: simpy.Environment, consumer: Consumer[int], out: list[tuple[float, Record[int]]]
) -> None:
    def loop() -> Generator[Event, Any, None]:
        while True:
            for r in (yield consumer.poll()):
                out.append((env.now, r))

    env.process(loop())


def test_offsets_count_up_per_partition_and_keys_keep_their_partition() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    topic = broker.topic("t", partitions=4)
    results: list[PublishResult] = []
    for i in range(40):
        _publish_at(env, broker, i * 0.01, f"k{i % 5}", i, results)
    env.run()
    assert all(r.ok and r.offset is not None for r in results)
    assert sum(len(p) for p in topic.partitions) == 40
    for p in topic.partitions:
        records = p.read(0, 100)
        assert [r.offset for r in records] == list(range(len(p)))
        assert all(topic.partition_for(r.key) is p for r in records)


def test_long_poll_returns_as_soon_as_a_record_arrives() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    topic = broker.topic("t")
    consumer: Consumer[int] = Consumer(broker, "c", random.Random(2), fetch_wait=0.5)
    consumer.assign(topic.partitions)
    got: list[tuple[float, Record[int]]] = []
    _consume(env, consumer, got)
    _publish_at(env, broker, 0.2, "k", 7, [])
    env.run(until=2.0)
    (t, record), *_ = got
    # published at 0.2, appended at 0.201 (one link delay), fetched 0.001 later
    assert t == pytest.approx(0.202) and record.value == 7 and consumer.lag() == 0


def test_without_long_poll_an_empty_fetch_waits_the_full_fetch_wait() -> None:
    env = simpy.Environment()
    broker = Broker(env, random.Random(1))
    topic = broker.topic("t")
    consumer: Consumer[int] = Consumer(
        broker, "c", random.Random(2), fetch_wait=0.5, long_poll=False
    )
    consumer.assign(topic.partitions)
    got: list[tuple[float, Record[int]]] = []
    _consume(env, consumer, got)
    _publish_at(env, broker, 0.2, "k", 7, [])
    env.run(until=2.0)
    assert got[0][0] == pytest.approx(0.5)


def test_lag_counts_records_not_fetched_yet() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    topic = broker.topic("t", partitions=2)
    consumer: Consumer[int] = Consumer(broker, "c", random.Random(2), max_records=3)
    consumer.assign(topic.partitions)
    for i in range(10):
        _publish_at(env, broker, 0.0, f"k{i}", i, [])
    env.run()
    assert consumer.lag() == 10
    consumer.poll()
    env.run()
    assert consumer.lag() == 7 and consumer.fetched == 3


def test_drops_are_errors_or_false_acks() -> None:
    env = simpy.Environment()
    loud = _broker(env, drop_prob=0.3)
    quiet = Broker(
        env, random.Random(1), link=Deterministic(0.001), drop_prob=0.3, silent_drop=True
    )
    out_loud: list[PublishResult] = []
    out_quiet: list[PublishResult] = []
    for i in range(1000):
        _publish_at(env, loud, 0.0, f"k{i}", i, out_loud)
        _publish_at(env, quiet, 0.0, f"k{i}", i, out_quiet)
    env.run()
    lost = [r for r in out_loud if r.offset is None]
    assert 250 < len(lost) < 350 and all(r.err == DROPPED and not r.ok for r in lost)
    assert all(r.ok for r in out_quiet)
    # Same stream, same coins: the very same publishes are dropped in both.
    assert [r.offset is None for r in out_quiet] == [r.offset is None for r in out_loud]
    assert loud.dropped == len(lost) == quiet.dropped


def test_broker_down_times_out_publishes_and_loses_what_it_held() -> None:
    env = simpy.Environment()
    broker = _broker(env, request_timeout=2.0)
    topic = broker.topic("t")
    consumer: Consumer[int] = Consumer(broker, "c", random.Random(2))
    consumer.assign(topic.partitions)
    results: list[PublishResult] = []
    for i in range(5):
        _publish_at(env, broker, 1.0 + i, "k", i, results)
    broker.outage(start=2.5, duration=2.0)
    env.run()
    # 1 and 2 were stored then lost; 3 and 4 timed out after 2 s; 5 lands in a new log.
    # (Results are listed as they complete: 5's ack comes before 4's timeout.)
    assert [(r.ok, r.offset, r.err) for r in results] == [
        (True, 0, None),
        (True, 1, None),
        (False, None, UNAVAILABLE),
        (True, 0, None),
        (False, None, UNAVAILABLE),
    ]
    assert broker.lost_in_outages == 2 and broker.outages == [(2.5, 4.5)]
    p = topic.partitions[0]
    assert (p.epoch, p.start_offset, p.end_offset) == (1, 0, 1)
    # The consumer notices the new epoch and reads the new log from its start.
    consumer.poll()
    env.run()
    assert consumer.position[p] == 1 and consumer.fetched == 1


def test_overlapping_broker_outages_nest() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    broker.outage(1.0, 2.0)
    broker.outage(2.0, 2.0)
    env.run(until=3.5)
    assert not broker.up
    env.run()
    assert broker.up and broker.outages == [(1.0, 4.0)]


def test_publishes_right_after_a_restart_can_be_acked_and_lost() -> None:
    env = simpy.Environment()
    broker = _broker(env, stale_ack_window=1.0)
    results: list[PublishResult] = []
    _publish_at(env, broker, 3.0, "k", 1, results)
    _publish_at(env, broker, 5.0, "k", 2, results)
    broker.outage(start=1.0, duration=1.5)
    env.run()
    assert [(r.ok, r.offset) for r in results] == [(True, None), (True, 0)]


def test_group_moves_a_dead_members_partitions_after_the_session_timeout() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    topic = broker.topic("t", partitions=4)
    group = ConsumerGroup(broker, "g", session_timeout=5.5)
    a: Consumer[int] = Consumer(broker, "a", random.Random(3))
    b: Consumer[int] = Consumer(broker, "b", random.Random(4))
    group.join(a)
    group.join(b)
    group.subscribe(topic)
    assert len(a.assignment) == 2 and len(b.assignment) == 2
    for i in range(8):
        _publish_at(env, broker, 0.0, f"k{i}", i, [])
    env.run()
    a.poll()
    env.run()
    a.commit()
    committed = {p: group.committed(p) for p in a.assignment}
    for i in range(8, 16):
        _publish_at(env, broker, env.now, f"k{i}", i, [])
    env.run()
    a.poll()  # fetched but never committed: a successor gets these again
    env.run()
    died = env.now
    group.fail(a)
    env.run(until=died + 5.0)
    assert len(b.assignment) == 2
    env.run(until=died + 6.0)
    assert len(b.assignment) == 4 and not a.assignment
    for p, offset in committed.items():
        assert b.position[p] == offset
    assert group.lag() == sum(p.end_offset for p in topic.partitions) - sum(committed.values())


def test_group_gives_new_topics_to_the_least_loaded_member() -> None:
    env = simpy.Environment()
    broker = _broker(env)
    group = ConsumerGroup(broker, "g")
    members: list[Consumer[int]] = [Consumer(broker, n, random.Random(0)) for n in "abc"]
    for m in members:
        group.join(m)
    for i in range(7):
        group.subscribe(broker.topic(f"group.{i}"))
    assert sorted(len(m.assignment) for m in members) == [2, 2, 3]
