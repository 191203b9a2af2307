"""The simulated world of one stage, as `loadtest/runner.py` runs the real one.

`StageModel` is the stage's server processes (`sim.server`, whose handlers a stage
subclass implements: how a send is handled, how a message reaches its recipients,
what happens at login, what its consumers do) and holds the rest of the world:
Redis (`sim.store`), the clients (`sim.client`), the load tool's users
(`sim.users`), the Kafka broker (`sim.kafka`) and consumer group (`sim.kafka_group`,
run by `sim.consumers`), the fault plan (`sim.chaos`) and the bookkeeping
(`sim.ledger`; histories for the traced conversations, exact counts for everybody).

The run mirrors `imlab load`: everybody connects first (at the spawn rate), the send
window opens, a drain waits until nothing moves, then every client runs its final
catch-up.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import simpy

from imlab.experiment.faults import FaultPlan
from sim.chaos import Chaos
from sim.client import Client, User
from sim.engine import FifoServer, Machine, Sampler
from sim.history import History
from sim.kafka import Broker
from sim.kafka_group import ConsumerGroup
from sim.ledger import Counts, Ledger
from sim.params import Dist, Params
from sim.scenario import SimScenario
from sim.server import Msg, Node, Server
from sim.store import Conv, Store
from sim.users import LoadUsers

__all__ = ["StageModel"]


class StageModel(Server):
    """The simulated world of one stage; subclasses implement the stage's handlers."""

    def __init__(
        self,
        scenario: SimScenario,
        params: Params,
        faults: FaultPlan,
        *,
        nodes: int = 1,
        workers: int = 0,
        traced: Iterable[int] = (),
        history: History | None = None,
        seed: int = 1,
        max_drain: float = 30.0,
        settle: float = 1.5,
        spawn_rate: float = 0.0,
        redis_shards: int = 1,
        kafka_leaders: int = 1,
    ) -> None:
        self.sc = scenario
        self.population = len(scenario.names)  # users in the population (a sample has fewer)
        self.scale = 1.0  # population users per simulated user (`sim.sample`)
        self.p = params
        self.faults = faults
        self.seed = seed
        self.history = history
        self.env = simpy.Environment()
        self.rng = random.Random(f"{seed}/model")
        self.send_start = math.inf  # set when the window opens (everybody connected)
        self.send_end = math.inf
        self.max_drain = max_drain
        self.settle = settle
        n_users = len(scenario.names)
        self.spawn_rate = spawn_rate or max(10.0, n_users / 2.0)  # the load tool's default
        self.final_at = math.inf
        self.drain_end: float | None = None
        streams = random.Random(f"{seed}/streams")

        def sampler(d: Dist) -> Sampler:
            return Sampler(d, streams)

        self.d_send_lag = sampler(params.client_send_lag)
        self.d_client = sampler(params.client_link)
        self.d_request = sampler(params.node_request)
        self.d_push = sampler(params.node_push)
        self.d_connect = sampler(params.node_connect)
        self.d_sync_msg = sampler(params.node_sync_message)
        self.d_relay = sampler(params.node_relay)
        self.d_verify = sampler(params.token_verify)
        self.d_redis_op = sampler(params.redis_op)
        self.d_redis_pipelined = sampler(params.redis_pipelined_op)
        self.d_worker = sampler(params.worker_record)
        self.d_loadgen = sampler(params.loadgen_event)
        self.d_kafka_record = sampler(params.kafka_record)  # last: the others' seeds stay

        traced_set = set(traced)
        self.convs = [Conv(c, c.index in traced_set) for c in scenario.convs]
        self.nodes = [Node(f"{self.node_prefix}-{i}", i) for i in range(nodes)]
        self.workers = [Node(f"worker-{i}", i) for i in range(workers)]
        self.store = Store(
            self.env,
            link=params.redis_link.mean,
            timeout=params.redis_timeout,
            op=self.d_redis_op,
            pipelined_op=self.d_redis_pipelined,
            shards=redis_shards,
        )
        n = len(self.nodes)
        self.users: list[User] = []
        for i, name in enumerate(scenario.names):
            home = zlib.crc32(name.encode()) % n  # imlab.client.ordered_endpoints
            order = [(home + k) % n for k in range(n)]
            self.users.append(User(i, name, [self.convs[k] for k in scenario.user_convs[i]], order))
        self.loadgens: list[FifoServer]
        if params.loadgen_processes > 0:
            lgs = [FifoServer(f"locust-{k}") for k in range(params.loadgen_processes)]
            for u in self.users:
                u.loadgen = lgs[u.idx % len(lgs)]
            self.loadgens = lgs
        else:
            self.loadgens = []
        self.ledger = Ledger()
        self.counts = Counts(0.0)
        self.traced_msgs: dict[int, Msg] = {}  # stored traced messages, for sync pages
        self.in_flight = 0
        self.client = Client(self)
        self.load = LoadUsers(self)
        self.chaos = Chaos(self)
        self.broker: Broker | None = None
        self.group: ConsumerGroup | None = None
        if self.uses_kafka:
            self.broker = Broker(
                self.env,
                random.Random(f"{seed}/kafka"),
                link=params.kafka_link.distribution(),
                drop_prob=faults.kafka_loss,
                silent_drop=self.kafka_drop_is_silent(),
                request_timeout=params.kafka_request_timeout,
                stale_ack_window=params.kafka_stale_window,
                durable=params.kafka_durable,
                record_cost=self.d_kafka_record if params.kafka_record.mean > 0 else None,
                leaders=kafka_leaders,
            )
            self.group = ConsumerGroup(
                self.broker, f"imlab-{self.stage}", session_timeout=params.kafka_session_timeout
            )
        self.setup()
        self.machine: Machine | None = None
        if params.machine_cores > 0:
            self.machine = self.shared_machine(params)

    def shared_machine(self, params: Params) -> Machine:
        """Put every process of the run on one machine of `params.machine_cores` cores."""
        kinds: list[tuple[str, FifoServer]] = [("front", n.cpu) for n in self.nodes]
        kinds += [("worker", n.cpu) for n in self.workers]
        kinds += [(name, server) for name, server in self.services().items()]
        kinds += [("loadgen", lg) for lg in self.loadgens]
        idle = sum(params.idle_cpu.get(kind, 0.0) for kind, _ in kinds)
        machine = Machine(params.machine_cores, idle + params.machine_outside)
        for _, server in kinds:
            server.machine = machine
        return machine

    # ------------------------------------------------------------ the run

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Call `fn` at simulated time `t` (now if `t` has passed)."""
        ev = self.env.timeout(max(0.0, t - self.env.now))
        ev.callbacks.append(lambda _e: fn())

    def consumers_back_at(self) -> float:
        """When consumers fetch again after a broker restart (now if they are not waiting)."""
        return self.env.now

    def apply_faults(self) -> None:
        """Schedule the fault plan (a stage adds what its own links do after a fault)."""
        self.chaos.apply()

    def start(self) -> None:
        """Connect everybody, spread over users / spawn rate seconds as Locust starts
        them, and record the groups the setup created."""
        self.load.spawn(len(self.users) / self.spawn_rate)
        if self.history is not None:
            for conv in self.convs:
                if conv.traced and conv.gid is not None:
                    creator = self.users[conv.members[0]].name
                    self.history.group(
                        0.0, creator, conv.gid, [self.users[m].name for m in conv.members]
                    )

    def open_window(self, t: float) -> None:
        """The send window opens at `t` (as the runner opens it once everybody is
        connected): faults are timed from here; the send clock and churn start."""
        self.send_start = t
        self.send_end = t + self.sc.duration
        self.counts.base = t
        self.apply_faults()
        self.load.open_window()

    def run(self, progress: Callable[[StageModel], None] | None = None, step: float = 1.0) -> None:
        """Run the send window, drain until nothing moves (or the cap), order the final
        catch-up, and run until every client has done it (or the cap)."""
        self.start()
        env = self.env
        t = 0.0
        connect_cap = 30.0 + 2.0 * len(self.users) / self.spawn_rate  # the runner's budget
        while t < connect_cap and self.counts.c.get("connects", 0) < len(self.users):
            t += 0.25
            env.run(until=t)
            if progress:
                progress(self)
        t += 0.5  # the runner opens the window half a second after the last connect
        env.run(until=t)
        self.open_window(t)
        while t < self.send_end:
            t = min(t + step, self.send_end)
            env.run(until=t)
            if progress:
                progress(self)
        quiet_since = t
        last = self._activity()
        cap = self.send_end + self.max_drain
        while t < cap:
            t = min(t + 0.25, cap)
            env.run(until=t)
            now = self._activity()
            if now != last or self.in_flight:
                last, quiet_since = now, t
            elif t - quiet_since >= self.settle:
                break
            if progress:
                progress(self)
        self.final_at = t
        self.load.final(t)
        # The runner's own wait for the final sync, within Locust's run-time limit
        # (`-t`: connect budget + window + drain cap + 120 s), which stops every user.
        cap = min(t + 30.0 + len(self.users) / 20.0, self.send_end + self.max_drain + 120.0)
        while t < cap and not all(u.finished for u in self._unfinished()):
            t = min(t + 0.5, cap)
            env.run(until=t)
            if progress:
                progress(self)
        self.drain_end = t

    def services(self) -> dict[str, FifoServer]:
        """The backing services' servers by name, for the run's figures (Redis, the
        Kafka broker's CPU when it has one; v5 adds PostgreSQL). A Redis Cluster's
        shards and the CPUs of several Kafka partition leaders are listed one by one
        (redis-0, redis-1, ..., kafka-0, ...)."""
        out = {s.name: s for s in self.store.shards}
        if self.broker is not None and self.broker.record_cost is not None:
            out |= {s.name: s for s in self.broker.cpus}
        return out

    def replace_service(self, name: str, server: FifoServer) -> None:
        """Put `server` where the service `name` of `services()` was (`sim.sample`)."""
        for i, s in enumerate(self.store.shards):
            if s.name == name:
                self.store.shards[i] = server
                return
        if self.broker is not None:
            for i, s in enumerate(self.broker.cpus):
                if s.name == name:
                    self.broker.cpus[i] = server
                    return
        raise KeyError(name)

    def loadgens_as_nodes(self) -> list[Node]:
        out = []
        for lg in self.loadgens:
            node = Node(lg.name, 0)
            node.cpu = lg
            out.append(node)
        return out

    def kafka_figures(self) -> dict[str, Any] | None:
        b = self.broker
        if b is None:
            return None
        return {
            "published": b.published,
            "appended": b.appended,
            "dropped": b.dropped,
            "timed_out": b.timed_out,
            "lost_in_outages": b.lost_in_outages,
            "durable": b.durable,
            "outages": [[round(s, 3), None if e is None else round(e, 3)] for s, e in b.outages],
            "group_lag_at_end": self.group.lag() if self.group is not None else None,
        }

    def _unfinished(self) -> list[User]:
        return [u for u in self.users if not u.finished]

    def _activity(self) -> tuple[int, int, int]:
        c = self.counts.c
        return (
            c.get("acked_ok", 0) + c.get("acked_error", 0),
            c.get("deliveries_push", 0),
            c.get("deliveries_sync", 0),
        )
