"""A Kafka-like log: a memory-only broker holding topics of partitioned append logs.

It models what the stages depend on and what goes wrong with it (docs/SERVICES.md):
publishes that are dropped with a probability, a broker-down window during
which publishes time out and after which everything the broker held is gone,
consumers that long-poll with a fetch wait, consumer lag, and consumer groups
whose partitions move to a survivor only after the session timeout, from the
last committed offset (so a crash redelivers what was not committed).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import simpy
from simpy.events import Event, Process

from sim.core import UNAVAILABLE, Deterministic, Distribution

__all__ = [
    "DROPPED",
    "Broker",
    "Consumer",
    "ConsumerGroup",
    "Partition",
    "PublishResult",
    "Record",
    "Topic",
]

V = TypeVar("V")

_INSTANT = Deterministic(0.0)

DROPPED = "dropped"
"""The error of a publish the broker never stored (the `kafka-loss` fault)."""


@dataclass(frozen=True, slots=True)
class Record(Generic[V]):
    topic: str
    partition: int
    offset: int
    key: str
    value: V
    appended: float


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a producer learns from one publish, and what really happened."""

    ok: bool
    """What the producer is told: True when it got an ack."""
    partition: int
    offset: int | None
    """Where the record landed; None when it was never stored (even if acked)."""
    err: str | None = None


class Partition(Generic[V]):
    """One append-only log. Offsets count from 0 in each epoch; a broker restart starts a
    new epoch with an empty log, as a memory-only broker does."""

    def __init__(self, broker: Broker, topic: str, index: int) -> None:
        self.broker = broker
        self.topic = topic
        self.index = index
        self.epoch = 0
        self.start_offset = 0
        self._records: list[Record[V]] = []
        self._first = 0  # index in _records of start_offset (records before it are trimmed)
        self._readers: list[Consumer[V]] = []

    @property
    def end_offset(self) -> int:
        """The offset the next record will get (Kafka's log end offset)."""
        return self.start_offset + len(self._records) - self._first

    def __len__(self) -> int:
        return self.end_offset - self.start_offset

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.index})"

    def read(self, offset: int, limit: int) -> list[Record[V]]:
        """Up to `limit` records from `offset` on (offset must lie in the log)."""
        i = self._first + offset - self.start_offset
        return self._records[i : i + limit]

    def trim(self, before: int) -> None:
        """Drop the records below offset `before`, e.g. once every reader has committed them."""
        before = min(before, self.end_offset)
        if before <= self.start_offset:
            return
        self._first += before - self.start_offset
        self.start_offset = before
        if self._first > 1024 and self._first * 2 > len(self._records):
            del self._records[: self._first]
            self._first = 0

    def _append(self, key: str, value: V, now: float) -> Record[V]:
        record = Record(self.topic, self.index, self.end_offset, key, value, now)
        self._records.append(record)
        for reader in self._readers:
            reader._notify(self)
        return record

    def _lose_everything(self) -> int:
        lost = len(self)
        self.epoch += 1
        self.start_offset = 0
        self._records = []
        self._first = 0
        return lost


class Topic(Generic[V]):
    """A named set of partitions; a record goes to the partition its key hashes to."""

    def __init__(self, broker: Broker, name: str, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        self.broker = broker
        self.name = name
        self.partitions: list[Partition[V]] = [
            Partition(broker, name, i) for i in range(partitions)
        ]

    def partition_for(self, key: str) -> Partition[V]:
        """The partition for `key` (CRC-32, stable across runs unlike `hash`)."""
        if len(self.partitions) == 1:
            return self.partitions[0]
        return self.partitions[zlib.crc32(key.encode()) % len(self.partitions)]

    def publish(self, key: str, value: V) -> Process:
        """Send one record; the process ends with a `PublishResult` at the producer."""
        return self.broker.env.process(self.publish_steps(key, value))

    def publish_steps(self, key: str, value: V) -> Generator[Event, Any, PublishResult]:
        """`publish` as steps to `yield from` inside the producer's own process (no
        process of its own: what a model with millions of publishes needs)."""
        return self.broker._publish(self.partition_for(key), key, value)

    def end_offsets(self) -> list[int]:
        return [p.end_offset for p in self.partitions]


class Broker:
    """A Kafka broker: durable (Apache Kafka) or memory-only (Tansu, `durable=False`).

    A publish travels `link` to the broker, is appended, and the ack travels
    `link` back. Each publish is dropped with probability `drop_prob`: the
    producer gets an error, or with `silent_drop` a false ack. While the broker
    is down a publish fails after `request_timeout`. A memory-only broker's `fail()`
    loses every record held, and a new epoch starts at `restore()`; for
    `stale_ack_window` seconds after that restore, publishes are acked but lost: a
    producer that kept metadata from before the restart (docs/SERVICES.md, Tansu).

    Every publish draws the same three numbers whatever happens to it, so runs
    that differ only in their faults keep all other draws in step.
    """

    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        *,
        name: str = "kafka",
        link: Distribution = _INSTANT,
        drop_prob: float = 0.0,
        silent_drop: bool = False,
        request_timeout: float = 30.0,
        stale_ack_window: float = 0.0,
        durable: bool = False,
    ) -> None:
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError("drop_prob must be between 0 and 1")
        self.env = env
        self.rng = rng
        self.name = name
        self.link = link
        self.drop_prob = drop_prob
        self.silent_drop = silent_drop
        self.request_timeout = request_timeout
        self.stale_ack_window = 0.0 if durable else stale_ack_window
        self.durable = durable
        self.topics: dict[str, Topic[Any]] = {}
        self._down = 0  # how many outages are in force; overlapping windows nest
        self.outages: list[tuple[float, float | None]] = []
        self.published = 0
        self.appended = 0
        self.dropped = 0
        self.timed_out = 0
        self.lost_in_outages = 0
        self._stale_until = -1.0

    @property
    def up(self) -> bool:
        return self._down == 0

    def topic(self, name: str, partitions: int = 1) -> Topic[Any]:
        """The topic called `name`, created with `partitions` partitions if new."""
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(self, name, partitions)
        return topic

    def fail(self) -> None:
        """Go down now (a memory-only broker loses every record held). Calls nest."""
        self._down += 1
        if self._down > 1:
            return
        self.outages.append((self.env.now, None))
        if self.durable:
            return
        for topic in self.topics.values():
            for partition in topic.partitions:
                self.lost_in_outages += partition._lose_everything()

    def restore(self) -> None:
        """End one outage; when none is left the broker is up, empty (topics are taken
        to be re-created at once)."""
        if not self._down:
            return
        self._down -= 1
        if self._down:
            return
        start, _ = self.outages[-1]
        self.outages[-1] = (start, self.env.now)
        self._stale_until = self.env.now + self.stale_ack_window

    def outage(self, start: float, duration: float) -> Process:
        """Schedule a down window [start, start + duration) in absolute simulated time."""

        def window() -> Generator[Event, Any, None]:
            yield self.env.timeout(max(0.0, start - self.env.now))
            self.fail()
            yield self.env.timeout(duration)
            self.restore()

        return self.env.process(window())

    def _publish(
        self, partition: Partition[V], key: str, value: V
    ) -> Generator[Event, Any, PublishResult]:
        env = self.env
        there = self.link.sample(self.rng)
        coin = self.rng.random()
        back = self.link.sample(self.rng)
        sent = env.now
        self.published += 1
        yield env.timeout(there)
        if not self.up:
            self.timed_out += 1
            yield env.timeout(max(0.0, sent + self.request_timeout - env.now))
            return PublishResult(False, partition.index, None, UNAVAILABLE)
        offset: int | None = None
        err: str | None = None
        if coin < self.drop_prob:
            self.dropped += 1
            err = None if self.silent_drop else DROPPED
        elif env.now < self._stale_until:
            self.dropped += 1
        else:
            offset = partition._append(key, value, env.now).offset
            self.appended += 1
        yield env.timeout(back)
        return PublishResult(err is None, partition.index, offset, err)


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
        while True:
            records = self._take() if broker.up else []
            if records or env.now >= deadline:
                break
            if self.long_poll and broker.up:
                self._wakeup = env.event()
                yield self._wakeup | env.timeout(deadline - env.now)
                self._wakeup = None
            else:
                yield env.timeout(deadline - env.now)
        yield env.timeout(broker.link.sample(self.rng))
        self.fetched += len(records)
        return records

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
