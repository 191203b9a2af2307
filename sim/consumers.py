"""The consumer loop of v3's servers and v4's workers, as `imlab/consumers.py` is the
real one: fetch a batch, handle each partition's records in order (partitions side
by side), commit, fetch again; a record whose handling meets `Unavailable` is retried
with backoff."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sim.engine import Refused
from sim.kafka import Record
from sim.server import Msg, Node, Steps, Unavailable

if TYPE_CHECKING:
    from sim.stage import StageModel

__all__ = ["ConsumerLoop"]


class ConsumerLoop:
    """The loop of `node`'s consumer; `handle` processes one record's message."""

    def __init__(self, model: StageModel, node: Node, handle: Callable[[Node, Msg], Steps]) -> None:
        self.m = model
        self.node = node
        self.handle = handle

    def run(self) -> Steps:
        """The loop, as a process body; it ends when its node dies."""
        m = self.m
        env = m.env
        node = self.node
        consumer = node.consumer
        group = m.group
        assert group is not None
        while node.alive:
            rejoin = m.consumers_back_at()
            if rejoin > env.now:  # the broker lost the group: the consumer rejoins first
                yield env.timeout(rejoin - env.now)
                continue
            records = yield from consumer.poll_steps()
            if not node.alive:
                return
            if not records:
                continue
            parts: dict[tuple[str, int], list[Record[Msg]]] = {}
            for rec in records:
                parts.setdefault((rec.topic, rec.partition), []).append(rec)
            fetched_at = env.now
            batch = consumer.background_batch if consumer.background_rate > 0 else 0
            procs = [env.process(self._partition(recs)) for recs in parts.values()]
            yield env.all_of(procs)
            if not node.alive:
                return
            if batch:  # the population's records of this fetch are handled before the commit
                left = fetched_at + consumer.background_hold(batch) - env.now
                if left > 0:
                    yield env.timeout(left)
            yield env.timeout(2 * m.p.kafka_link.mean)  # the commit's round trip
            assert m.broker is not None
            handled = [m.broker.topics[t].partitions[i] for t, i in parts]
            consumer.commit(handled)
            for p in handled:
                p.trim(group.committed(p))

    def _partition(self, records: list[Record[Msg]]) -> Steps:
        m = self.m
        env = m.env
        node = self.node
        for rec in records:
            delay = 0.05
            while True:
                if not node.alive:
                    return
                try:
                    yield from m.cpu(node, m.d_worker())
                    yield from self.handle(node, rec.value)
                    break
                except Unavailable:
                    m.counts.inc("record_retries")
                    yield env.timeout(delay)
                    delay = min(delay * 2, 2.0)
                except Refused:
                    return
