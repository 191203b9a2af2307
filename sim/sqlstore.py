"""PostgreSQL as stage v5 uses it, as `imlab/sqlstore.py` is the real system of record:
one server whose CPU is a FIFO server, the round trips to it, a commit's WAL flush, and
what it holds besides the messages and seqs (which stay on `sim.store.Conv`, as the
model's one copy of each conversation): the outbox of messages not yet in Kafka.

A call is `statements` round trips on the link (asyncpg sends each statement of a
transaction, BEGIN and COMMIT on their own) and one job of CPU at the server; a commit
then waits for its WAL flush (`fsync`), which holds no CPU, and commits finish in the
order they were made (a flush covers every commit before it: group commit). The
statements of one call reach the server as one job at the first arrival, so the FIFO
server is still served in call order (`FifoServer.serve` needs that).

Faults: a restarted server (`restart`, SIGKILL and start: `db-restart`) refuses calls
while it is away and loses the work in progress; what was committed (the messages,
their seqs, the outbox rows) survives, as PostgreSQL's WAL makes it. A frozen server
(`pause`) answers late and a call fails after asyncpg's command timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import simpy

from sim.engine import FifoServer, Refused, Sampler
from sim.store import Unavailable

if TYPE_CHECKING:
    from sim.server import Msg, Steps

__all__ = ["SqlStore"]


class SqlStore:
    """The PostgreSQL server and the tables the model needs beyond `Conv`."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        link: float,
        timeout: float,
        query: Sampler,
        transaction: Sampler,
        fsync: Sampler,
    ) -> None:
        self.env = env
        self.postgres = FifoServer("postgres")
        self.link = link  # constant: keeps arrivals in call order
        self.timeout = timeout
        self.d_query = query
        self.d_transaction = transaction
        self.d_fsync = fsync
        self.flushed = 0.0  # when the latest commit's WAL flush ends
        self.outbox: dict[int, tuple[float, Msg]] = {}  # id -> (created, message), by id
        self.outbox_ids = 0
        self.outbox_added = 0
        self.outbox_deleted = 0
        self._windows: set[tuple[float, float, bool]] = set()

    # ------------------------------------------------------------ faults

    def restart(self, start: float, end: float) -> None:
        """The server is killed at `start` and answers again at `end` (`db-restart`).
        Giving the same window twice applies it once."""
        if (start, end, True) not in self._windows:
            self._windows.add((start, end, True))
            self.postgres.down(start, end)

    def pause(self, start: float, end: float) -> None:
        """The server is frozen (SIGSTOP) from `start` to `end`: work waits."""
        if (start, end, False) not in self._windows:
            self._windows.add((start, end, False))
            self.postgres.pause(start, end)

    # ------------------------------------------------------------ calls

    def call(
        self, effect: Callable[[], Any], *, statements: int = 1, commit: bool = False
    ) -> Steps:
        """One call from a process (`statements` round trips; with `commit`, a
        transaction and its flush). `effect` runs when the server executes the call;
        a refused call raises `Unavailable` with no effect, a late one raises it after
        the timeout (the effect happened: the client cannot tell)."""
        env = self.env
        t0 = env.now
        link = self.link
        if commit:
            service = self.d_transaction()
        else:
            service = self.d_query()
            if statements > 1:
                service += sum(self.d_query() for _ in range(statements - 1))
        try:
            done = self.postgres.serve(t0 + link, service)
        except Refused as r:
            yield env.timeout(max(0.0, r.at - t0) + link)
            raise Unavailable("postgres") from None
        result = effect()
        if commit:
            done += self.d_fsync()
            if done < self.flushed:  # a flush covers the commits before it, in order
                done = self.flushed
            self.flushed = done
        back = done + link - t0 + 2 * link * (statements - 1)
        if back > self.timeout:
            yield env.timeout(self.timeout)
            raise Unavailable("postgres timeout")
        yield env.timeout(back)
        return result

    # ------------------------------------------------------------ the outbox

    def outbox_add(self, msg: Msg) -> int:
        """Write `msg`'s outbox row (in the send's transaction); returns its id."""
        self.outbox_ids += 1
        self.outbox[self.outbox_ids] = (self.env.now, msg)
        self.outbox_added += 1
        return self.outbox_ids

    def outbox_take(self, older_than: float, limit: int) -> list[tuple[int, Msg]]:
        """`SqlStore.outbox_take`: up to `limit` rows at least `older_than` seconds old,
        oldest first (rows are created in id order, so the scan stops at a young one)."""
        before = self.env.now - older_than
        rows: list[tuple[int, Msg]] = []
        for oid, (created, msg) in self.outbox.items():
            if created >= before or len(rows) >= limit:
                break
            rows.append((oid, msg))
        return rows

    def outbox_done(self, ids: list[int]) -> None:
        """`SqlStore.outbox_done`: delete the rows Kafka has acknowledged."""
        for oid in ids:
            if self.outbox.pop(oid, None) is not None:
                self.outbox_deleted += 1
