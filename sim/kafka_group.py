"""The consumer side of the Kafka-like log (`sim.kafka`): consumers that long-poll with
a fetch wait, consumer lag, and consumer groups whose partitions move to a survivor
only after the session timeout, from the last committed offset (so a crash
redelivers what was not committed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Iterable
from typing import Any, Generic, TypeVar

import numpy as np
from simpy.events import Event, Process

from sim.kafka import Broker, Partition, Record, Topic

__all__ = ["Consumer", "ConsumerGroup"]

V = TypeVar("V")


class Consumer(Generic[V]):
    """Reads its assigned partitions from a position per partition, by long-poll fetches.

    A fetch returns at once what is available (up to `max_records`), else waits
    for a record to arrive or `fetch_wait` to pass (Kafka's fetch.max.wait).
    Without `long_poll` an empty fetch always waits the full `fetch_wait`.
    When a partition's log is lost (a broker restart) or trimmed past the
    position, the consumer starts again from the log's start.
    """

    def __init__(
        self,
        broker: Broker,
        name: str,
        rng: random.Random,
        *,
        fetch_wait: float = 0.5,
        max_records: int = 500,
        long_poll: bool = True,
    ) -> None:
        self.broker = broker
        self.env = broker.env
        self.name = name
        self.rng = rng
        self.fetch_wait = fetch_wait
        self.max_records = max_records
        self.long_poll = long_poll
        self.group: ConsumerGroup | None = None
        self.position: dict[Partition[V], int] = {}
        self.fetched = 0
        self._epoch: dict[Partition[V], int] = {}
        self._ready: dict[Partition[V], None] = {}  # partitions that may have records to fetch
        self._wakeup: Event | None = None
        # A sampled run (`sim.sample`): the unsampled population's records on this
        # consumer's partitions come at `background_rate` and end a waiting fetch. A fetch
        # brings those that came since the one before (`background_batch`), and the loop
        # handles them (`background_work` of CPU each) before it commits.
        self.background_rate = 0.0
        self.background_work = 0.0
        self.background_batch = 0
        self._checked = 0.0  # the population's records are counted up to here
        self._np: np.random.Generator | None = None  # made in a sampled run only

    def __repr__(self) -> str:
        return f"Consumer({self.name!r})"

    @property
    def assignment(self) -> list[Partition[V]]:
        return list(self.position)

    def assign(self, partitions: Iterable[Partition[V]], at: int | None = None) -> None:
        """Start reading these partitions from offset `at` (default: the log's start)."""
        for p in partitions:
            if p in self.position:
                continue
            self.position[p] = p.start_offset if at is None else at
            self._epoch[p] = p.epoch
            p._readers.append(self)
            self._notify(p)

    def unassign(self, partitions: Iterable[Partition[V]]) -> None:
        for p in partitions:
            if self.position.pop(p, None) is not None:
                del self._epoch[p]
                self._ready.pop(p, None)
                p._readers.remove(self)

    def lag(self) -> int:
        """Records in the assigned partitions not fetched yet."""
        return sum(p.end_offset - self._current(p) for p in self.position)

    def commit(self, partitions: Iterable[Partition[V]] | None = None) -> None:
        """Commit the positions (of `partitions`, default all assigned) to the group:
        what a successor resumes from."""
        if self.group is not None:
            self.group.commit(self, partitions)

    def poll(self) -> Process:
        """One fetch; the process ends with the list of records (possibly empty)."""
        return self.env.process(self._poll())

    def poll_steps(self) -> Generator[Event, Any, list[Record[V]]]:
        """`poll` as steps to `yield from` in the consumer's own process."""
        return self._poll()

    def _poll(self) -> Generator[Event, Any, list[Record[V]]]:
        env, broker = self.env, self.broker
        yield env.timeout(broker.link.sample(self.rng))
        deadline = env.now + self.fetch_wait
        sampled = self.background_rate > 0
        population = 0  # the population's records this fetch brings (a sampled run)
        while True:
            records = self._take() if broker.up else []
            if records or env.now >= deadline:
                if sampled and broker.up:
                    population = self._came()
                break
            if sampled and broker.up:
                population = self._came()
                if population:  # the population's records came meanwhile
                    break
            if self.long_poll and broker.up:
                wait = deadline - env.now
                bg = self.rng.expovariate(self.background_rate) if sampled else math.inf
                wake = self._wakeup = env.event()
                yield wake | env.timeout(min(wait, bg))
                self._wakeup = None
                if not wake.triggered and bg < wait:
                    population = 1  # the population's next record answered the fetch
                    self._checked = env.now
                    break
                self._checked = env.now  # none of theirs came while it waited
            else:
                yield env.timeout(deadline - env.now)
        self.background_batch = population
        if population and not records:  # only the population's: handled, then committed
            yield env.timeout(self.background_hold(population) + 2 * broker.link.mean)
        yield env.timeout(broker.link.sample(self.rng))
        self.fetched += len(records)
        return records

    def _came(self) -> int:
        """How many of the population's records came since the last look."""
        mean = self.background_rate * max(0.0, self.env.now - self._checked)
        self._checked = self.env.now
        if self._np is None:
            self._np = np.random.Generator(np.random.PCG64(self.rng.getrandbits(64)))
        return int(self._np.poisson(mean))

    def background_hold(self, batch: int) -> float:
        """Seconds the loop spends on `batch` of the population's records: their CPU, one
        after another. Their Redis round trips are left out: with them, the sampled push
        p50 and p99 ran 7 % and 12 % above the full model's at 10,000 users
        (tests/unit/test_sim_sample.py), where without them they are within 3-5 %."""
        return batch * self.background_work

    def _current(self, p: Partition[V]) -> int:
        """The position in `p`, reset to the log's start if the log was lost or trimmed."""
        pos = self.position[p]
        if self._epoch[p] != p.epoch or not p.start_offset <= pos <= p.end_offset:
            self._epoch[p] = p.epoch
            pos = self.position[p] = p.start_offset
        return pos

    def _take(self) -> list[Record[V]]:
        out: list[Record[V]] = []
        for p in list(self._ready):
            pos = self._current(p)
            got = p.read(pos, self.max_records - len(out))
            out += got
            self.position[p] = pos + len(got)
            if self.position[p] >= p.end_offset:
                del self._ready[p]
            else:
                # Not drained: move it to the back so the next fetch serves the others first.
                del self._ready[p]
                self._ready[p] = None
            if len(out) >= self.max_records:
                break
        return out

    def _notify(self, p: Partition[V]) -> None:
        self._ready[p] = None
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()


class ConsumerGroup:
    """Spreads the partitions of subscribed topics over live members, with committed offsets.

    Assignment is sticky: a partition stays with its member while that member
    lives; free partitions go to the least-loaded member. A member that `fail`s
    keeps its partitions (nobody reads them) until `session_timeout` passes,
    then they move on and are read from the last committed offset. The
    committed offsets live on the broker and are lost with it.
    """

    def __init__(self, broker: Broker, name: str, *, session_timeout: float = 5.5) -> None:
        self.broker = broker
        self.env = broker.env
        self.name = name
        self.session_timeout = session_timeout
        self.members: list[Consumer[Any]] = []
        self.owner: dict[Partition[Any], Consumer[Any] | None] = {}
        self._committed: dict[Partition[Any], tuple[int, int]] = {}  # -> (epoch, offset)

    def subscribe(self, topic: Topic[Any]) -> None:
        """Add a topic's partitions (e.g. a group's topic created during the run)."""
        self.subscribe_all([topic])

    def subscribe_all(self, topics: Iterable[Topic[Any]]) -> None:
        """Add many topics' partitions with one assignment round (a topic per group)."""
        for topic in topics:
            for p in topic.partitions:
                self.owner.setdefault(p, None)
        self._assign()

    def join(self, consumer: Consumer[Any]) -> None:
        consumer.group = self
        self.members.append(consumer)
        self._assign()

    def fail(self, consumer: Consumer[Any]) -> Process:
        """The member died now; its partitions move after the session timeout."""
        if consumer in self.members:
            self.members.remove(consumer)

        def expire() -> Generator[Event, Any, None]:
            yield self.env.timeout(self.session_timeout)
            mine = [p for p, owner in self.owner.items() if owner is consumer]
            consumer.unassign(mine)
            for p in mine:
                self.owner[p] = None
            self._assign()

        return self.env.process(expire())

    def commit(
        self, consumer: Consumer[Any], partitions: Iterable[Partition[Any]] | None = None
    ) -> None:
        position = consumer.position
        for p in position if partitions is None else partitions:
            if p in position and self.owner.get(p) is consumer:
                self._committed[p] = (p.epoch, position[p])

    def committed(self, p: Partition[Any]) -> int:
        """The committed offset of `p` in its current epoch (the log start if none)."""
        epoch, offset = self._committed.get(p, (-1, 0))
        return offset if epoch == p.epoch else p.start_offset

    def lag(self) -> int:
        """Records not yet committed, over all subscribed partitions."""
        return sum(p.end_offset - self.committed(p) for p in self.owner)

    def _assign(self) -> None:
        if not self.members:
            return
        load = {id(m): 0 for m in self.members}
        for owner in self.owner.values():
            if owner is not None and id(owner) in load:
                load[id(owner)] += 1
        for p, owner in self.owner.items():
            if owner is not None:
                continue
            member = min(self.members, key=lambda m: load[id(m)])
            load[id(member)] += 1
            self.owner[p] = member
            member.assign([p], at=self.committed(p))
