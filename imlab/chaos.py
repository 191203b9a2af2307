"""Live fault injection on a running `Cluster`, on the schedule of a fault spec
(`imlab.experiment.faults.parse_faults`, the same spelling `imlab sim` uses).

Each fault is applied to the real processes and then *verified*: a paused Redis
must stop answering, a killed broker must stop answering metadata requests, a
crashed process must be gone. The record of what happened (absolute times, and
whether it was verified) goes into the run's manifest and a `fault` history, so
the checker sees the window rather than a request for one.

- `redis-outage:D@T`  SIGSTOP Redis at T, SIGCONT at T+D (clients see timeouts)
- `redis-restart:D@T` SIGKILL Redis at T, start it again at T+D (same port)
- `broker-down:D@T`   stop one Kafka broker (SIGTERM: a controlled shutdown) at T,
                      start it again at T+D; `broker-down:all:D@T` the whole cluster.
                      Apache Kafka keeps its data on disk; Tansu comes back empty
- `broker-kill:D@T`   the same with SIGKILL (a crash); `broker-kill:all:D@T` too
- `crash:NAME@T`      SIGKILL a server, gateway or worker at T (not restarted)
- `redis-master-kill[:D]@T` (a Sentinel set) SIGKILL the current master at T; the
                      sentinels promote the replica (the failover time is in the
                      record's detail); at T+D (5 s by default) the killed node is
                      started again as a replica of the new master
- `db-restart:D@T`    stop PostgreSQL (fast shutdown) at T, start it at T+D (data kept)
- `token-revoke:N@T`  (a stage with a revocation list, v5) revoke every token of N of
                      the run's users at T, chosen from the run's seed; a `revoked`
                      history event per user; the record's detail says how many
                      sessions the gateways closed (their `sessions_revoked` counter)
- On a Sentinel set `redis-outage` pauses every data node (the sentinels stay up);
  `redis-restart` is refused there (use `redis-master-kill`).
- `kafka-loss:P` and `churn:F` are not scheduled here: the first is a drop rate
  the v3/v4 producers apply (`--kafka-drop`), the second the load scenario's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imlab.brokers import KafkaNode, TansuNode, kafka_metadata_ok
from imlab.cluster import Cluster
from imlab.experiment import history as H
from imlab.experiment.faults import (
    BrokerDown,
    BrokerKill,
    Crash,
    DbRestart,
    FaultPlan,
    RedisMasterKill,
    RedisOutage,
    RedisRestart,
    TokenRevoke,
)
from imlab.services import RedisSentinelSet, Service, ServiceError

# the faults scheduled here (the others are run-long: kafka-loss, churn)
Scheduled = (
    RedisOutage | RedisRestart | RedisMasterKill | DbRestart | BrokerDown | Crash | TokenRevoke
)

REVOKE_WATCH = 3.0  # seconds to watch the gateways close the revoked users' sessions

log = logging.getLogger("imlab.chaos")


@dataclass
class FaultRecord:
    """One injected fault as it really happened (epoch seconds)."""

    kind: str
    target: str
    start: float
    end: float | None = None
    verified: bool = False
    detail: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answers(svc: Service, timeout: float = 0.3) -> bool:
    """Does the service answer a real request within `timeout`?"""
    if isinstance(svc, KafkaNode | TansuNode):
        with contextlib.suppress(OSError):
            return kafka_metadata_ok(svc.host, svc.port, timeout)
        return False
    with (
        contextlib.suppress(OSError),
        socket.create_connection((svc.host, svc.port), timeout=timeout) as s,
    ):
        s.settimeout(timeout)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


def revoked_users(users: Sequence[str], count: int, seed: int) -> list[str]:
    """The `count` users `token-revoke` revokes: picked by position from the run's seed,
    so a rerun with the same seed and users revokes the same ones (in plan order)."""
    picked = random.Random(f"token-revoke:{seed}").sample(range(len(users)), count)
    return [users[i] for i in sorted(picked)]


class LiveFaults:
    """Runs a fault plan against a cluster in a background thread."""

    def __init__(
        self,
        cluster: Cluster,
        plan: FaultPlan,
        history: Path | None = None,
        *,
        users: Sequence[str] = (),
        seed: int = 1,
    ) -> None:
        self.cluster = cluster
        self.plan = plan
        self.history = history
        self.users = list(users)  # the run's users, in plan order (token-revoke picks)
        self.seed = seed
        self.records: list[FaultRecord] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.t0 = 0.0

    def start(self, t0: float | None = None) -> LiveFaults:
        self.t0 = time.time() if t0 is None else t0
        for fault in self.plan.items:
            if isinstance(fault, Scheduled):
                t = threading.Thread(target=self._run, args=(fault,), daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def settled(self, grace: float = 0.0) -> bool:
        """True once every scheduled fault has run and its window closed `grace` s ago."""
        if any(t.is_alive() for t in self._threads):
            return False
        with self._lock:
            ends = [r.end for r in self.records if r.end is not None]
        return not ends or time.time() >= max(ends) + grace

    def stop(self) -> None:
        """End every window now (resume/restart what is down) and wait for the threads."""
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _sleep_until(self, offset: float) -> bool:
        """False if stopped before the time came."""
        return not self._stop.wait(max(0.0, self.t0 + offset - time.time()))

    def _record(self, rec: FaultRecord, *extra: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(rec)
            if self.history is not None:
                event = H.event(H.FAULT, rec.start, **rec.as_dict())
                with self.history.open("a") as f:
                    for e in (*extra, event):
                        f.write(json.dumps(e) + "\n")

    def _run(self, fault: Scheduled) -> None:
        start = fault.at if isinstance(fault, Crash | TokenRevoke) else fault.start
        if not self._sleep_until(start):
            return
        try:
            if isinstance(fault, Crash):
                self._crash(fault)
            elif isinstance(fault, TokenRevoke):
                self._revoke(fault)
            else:
                self._window(fault)
        except Exception:  # a failed injection is reported, never kills the run
            log.exception("fault %s failed", fault.spec())

    def _crash(self, fault: Crash) -> None:
        svc = self.cluster.process(fault.target)
        rec = FaultRecord("crash", fault.target, time.time())
        svc.kill()
        rec.end = None
        rec.verified = not svc.running()
        rec.detail.append(f"pid {svc.pid} killed" if rec.verified else "process still running")
        self._record(rec)

    def _revoke(self, fault: TokenRevoke) -> None:
        """Every token of `count` users (picked from the seed) revoked in the database;
        then the gateways' `sessions_revoked` counters are watched for the closes."""
        from imlab.sqlstore import SqlStore  # asyncpg: only a stage with a database needs it

        url = self.cluster.db_url
        if url is None:
            raise RuntimeError(f"{fault.kind}: this stage keeps no revocation list")
        users = revoked_users(self.users, fault.count, self.seed)
        before = self._sessions_revoked()
        rec = FaultRecord(fault.kind, f"{len(users)} users", time.time())

        async def revoke() -> list[float]:
            store = SqlStore(url, max_size=1)
            await store.start()
            try:
                times = []
                for user in users:
                    await store.revoke(user=user, issued_before=time.time() + 1)
                    times.append(time.time())
                return times
            finally:
                await store.close()

        times = asyncio.run(revoke())
        events = [H.event(H.REVOKED, t, user=u) for u, t in zip(users, times, strict=True)]
        rec.detail.append(f"revoked {', '.join(users)}")
        closed, took = 0.0, 0.0
        if before is not None:
            deadline = time.time() + REVOKE_WATCH
            while not self._stop.is_set() and time.time() < deadline:
                now = self._sessions_revoked()
                closed, took = (now or before) - before, time.time() - times[-1]
                if closed >= len(users):
                    break
                time.sleep(0.1)
            rec.detail.append(
                f"{len(users)} users revoked, {closed:g} of their connections closed "
                f"within {took:.1f} s"
            )
        else:
            rec.detail.append(f"{len(users)} users revoked (the closes were not observable)")
        rec.verified = len(times) == len(users) and (before is None or closed >= len(users))
        self._record(rec, *events)

    def _sessions_revoked(self) -> float | None:
        """The gateways' summed `sessions_revoked` counters, or None if one does not answer."""
        total = 0.0
        for url in self.cluster.endpoints:
            try:
                with urllib.request.urlopen(f"{url}/metrics", timeout=1.0) as r:
                    text = r.read().decode()
            except OSError:
                return None
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if not line.startswith("#") and "sessions_revoked_total" in name:
                    total += float(value.rsplit(" ", 1)[-1])
        return total

    def _window(self, fault: Scheduled) -> None:
        assert not isinstance(fault, Crash | TokenRevoke)
        if isinstance(fault, BrokerDown):
            return self._broker_window(fault)
        if isinstance(fault, DbRestart):
            return self._db_window(fault)
        if isinstance(fault, RedisMasterKill):
            return self._master_kill(fault)
        if self.cluster.sentinel is not None:
            return self._sentinel_outage(fault, self.cluster.sentinel)
        svc = self.cluster.redis
        if svc is None:
            raise RuntimeError(f"{fault.kind}: this stage has no Redis started by imlab")
        rec = FaultRecord(fault.kind, fault.target, time.time())
        if isinstance(fault, RedisOutage):
            svc.pause()
        else:
            svc.kill()
        down = not _answers(svc)
        rec.detail.append("down: no answer" if down else "down: still answering")
        self._sleep_until(fault.start + fault.duration)
        if isinstance(fault, RedisOutage):
            svc.resume()
        else:
            svc.start()
        rec.end = time.time()
        up = _answers(svc, timeout=2.0)
        rec.detail.append("back: answering" if up else "back: not answering")
        rec.verified = down and up
        self._record(rec)

    def _sentinel_outage(self, fault: RedisOutage | RedisRestart, sset: RedisSentinelSet) -> None:
        """Every data node of the set paused for the window (the sentinels stay up)."""
        if isinstance(fault, RedisRestart):
            raise RuntimeError(
                "redis-restart: on a Sentinel set kill the master instead (redis-master-kill)"
            )
        rec = FaultRecord(fault.kind, fault.target, time.time())
        sset.pause_data()
        down = not any(_answers(n) for n in sset.nodes)
        rec.detail.append(
            f"{len(sset.nodes)} data node(s) paused: "
            + ("down: no answer" if down else "down: still answering")
        )
        self._sleep_until(fault.end)
        sset.resume_data()
        rec.end = time.time()
        up = False
        with contextlib.suppress(ServiceError):
            up = _answers(sset.master(), timeout=2.0)
        rec.detail.append("back: answering" if up else "back: not answering")
        rec.verified = down and up
        self._record(rec)

    def _master_kill(self, fault: RedisMasterKill) -> None:
        """SIGKILL the master, time the failover, restart the node as a replica."""
        sset = self.cluster.sentinel
        if sset is None:
            raise RuntimeError(f"{fault.kind}: this stage has no Sentinel set started by imlab")
        rec = FaultRecord(fault.kind, fault.target, time.time())
        node = sset.kill_master()
        down = not _answers(node)
        rec.detail.append(f"{node.name} killed: " + ("no answer" if down else "still answering"))
        failed_over = False
        try:
            took = sset.wait_failover(node, timeout=max(30.0, fault.duration))
            failed_over = True
            rec.detail.append(f"failover to {sset.master().name} in {took:.2f}s")
        except ServiceError as exc:
            rec.detail.append(str(exc))
        self._sleep_until(fault.end)
        up = False
        try:
            sset.restart_node(node)
            up = True
            rec.detail.append(f"{node.name} back as a replica of {sset.master().name}")
        except ServiceError as exc:
            rec.detail.append(f"{node.name} did not come back: {exc}")
        rec.end = time.time()
        rec.verified = down and failed_over and up
        self._record(rec)

    def _db_window(self, fault: DbRestart) -> None:
        """PostgreSQL stopped (fast shutdown) for the window, then started again."""
        pg = self.cluster.postgres
        if pg is None:
            raise RuntimeError(f"{fault.kind}: this stage has no PostgreSQL started by imlab")
        rec = FaultRecord(fault.kind, fault.target, time.time())
        pg.stop()
        down = not pg.answering()
        rec.detail.append("down: no answer" if down else "down: still answering")
        self._sleep_until(fault.end)
        up = False
        try:
            pg.start()
            up = pg.answering(timeout=2.0)
        except ServiceError as exc:
            rec.detail.append(f"did not come back: {exc}")
        rec.end = time.time()
        rec.detail.append("back: answering" if up else "back: not answering")
        rec.verified = down and up
        self._record(rec)

    def _broker_window(self, fault: BrokerDown) -> None:
        """Stop (or kill) one broker, or all, for the window; then start them again."""
        broker = self.cluster.kafka
        if broker is None:
            raise RuntimeError(f"{fault.kind}: this stage has no Kafka cluster started by imlab")
        # One broker: the first node (on a one-node cluster, the whole cluster).
        nodes = broker.nodes if fault.scope == "all" else broker.nodes[:1]
        target = "kafka" if fault.scope == "all" else nodes[0].name
        rec = FaultRecord(fault.kind, target, time.time())
        for node in nodes:
            if isinstance(fault, BrokerKill):
                node.kill()
            else:
                node.stop(timeout=30.0)
        down = not any(_answers(n) for n in nodes)
        rec.detail.append(
            f"{len(nodes)} of {len(broker.nodes)} broker(s) "
            + ("down: no answer" if down else "down: still answering")
        )
        self._sleep_until(fault.start + fault.duration)
        for node in nodes:
            node.spawn()
        up = True
        for node in nodes:
            try:
                node.wait_ready()
            except Exception as exc:
                up = False
                rec.detail.append(f"{node.name} did not come back: {exc}")
        rec.end = time.time()
        rec.detail.append("back: answering" if up else "back: not answering")
        if not broker.durable:
            rec.detail.append(f"{broker.kind} is memory-only: it came back empty")
        rec.verified = down and up
        self._record(rec)

    def manifest_faults(self) -> list[dict[str, Any]]:
        """The manifest's `faults`: scheduled windows as they really happened, plus the
        run-long ones (kafka-loss, churn) with the run's bounds filled in by the caller."""
        with self._lock:
            return [r.as_dict() for r in sorted(self.records, key=lambda r: r.start)]
