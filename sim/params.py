"""The numbers a stage model runs on: service times, network delays and client timings,
as a JSON parameter file that `imlab calibrate` writes and `imlab sim --params` reads.

Every duration is a distribution given by its mean and coefficient of variation
(log-normal, or constant when cv is 0), in seconds. The built-in defaults were
derived with `imlab calibrate` from three real v2 runs on this 2-core machine
(see docs/RESULTS.md); the Kafka, worker and relay figures, which no v2 run can
show, were set by hand against one real v4 run (docs/SERVICES.md for their shape).
The PostgreSQL figures of v5 (`db_*`) and `redis_failover` are first estimates,
to be calibrated from real v5 runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sim.core import Deterministic, Distribution, LogNormal

__all__ = ["CALIBRATION_DIR", "DEFAULTS", "Dist", "Params", "load_params", "stage_defaults"]

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
"""Each stage's defaults, `imlab calibrate` on its own real runs (`<stage>.json`)."""


@dataclass(frozen=True, slots=True)
class Dist:
    """A non-negative duration: log-normal with this mean and cv, or constant when cv is 0."""

    mean: float
    cv: float = 0.0

    def __post_init__(self) -> None:
        if self.mean < 0 or self.cv < 0:
            raise ValueError("a duration needs mean >= 0 and cv >= 0")

    def distribution(self) -> Distribution:
        if self.cv == 0 or self.mean == 0:
            return Deterministic(self.mean)
        return LogNormal.from_mean_cv(self.mean, self.cv)

    def scaled(self, factor: float) -> Dist:
        return Dist(self.mean * factor, self.cv)


@dataclass(frozen=True)
class Params:
    """Everything a stage model needs besides the scenario and the faults."""

    # Clients: how late a send leaves after its scheduled time, and the one-way delay
    # between a client's application and a server's handler (network and both
    # Socket.IO stacks).
    client_send_lag: Dist = Dist(0.00076, 0.93)
    client_link: Dist = Dist(0.00076, 0.4)
    # A server's or gateway's event loop (CPU per unit of work).
    node_request: Dist = Dist(0.00058, 0.5)
    """parse, dispatch and ack one request (send, latest, sync, hello)"""
    node_push: Dist = Dist(0.00003, 0.3)
    """emit one message to one connection"""
    node_connect: Dist = Dist(0.001, 0.5)
    """accept a connection and log it in"""
    node_sync_message: Dist = Dist(0.00002, 0.0)
    """encode one message of a sync page"""
    node_relay: Dist = Dist(0.0003, 0.5)
    """decode one relayed envelope (v3 server-to-server, v4 worker-to-gateway)"""
    token_verify: Dist = Dist(0.00015, 0.3)
    """v4: check one signed token at connect"""
    # Redis: one single-threaded server.
    redis_link: Dist = Dist(0.00005, 0.3)
    redis_op: Dist = Dist(0.000037, 0.5)
    redis_pipelined_op: Dist = Dist(0.0000046, 0.5)
    """each further command of a pipeline (the relay's PUBLISHes): an eighth of a
    command, the ratio of pipelined to sequential throughput in docs/SERVICES.md"""
    redis_timeout: float = 5.0
    redis_pool: int = 256
    """the servers' redis-py max_connections: calls beyond it fail at once"""
    """the servers' redis-py socket_timeout: a call with no answer fails after this"""
    # Kafka (docs/SERVICES.md: fetch_max_wait 10 ms gives p50 3-5 ms end to end).
    kafka_link: Dist = Dist(0.0005, 0.5)
    kafka_fetch_wait: float = 0.010
    kafka_long_poll: bool = False
    """whether the broker answers a waiting fetch as soon as a record arrives; set
    false because the real v3/v4 consumers see records ~fetch_wait/2 late (docs/RESULTS.md)"""
    kafka_record: Dist = Dist(0.0002, 0.5)
    """the broker's CPU per published record (the produce request, acks=all, and its
    share of the fetches that read it): one core's worth, so one broker carries at most
    ~5,000 records/s. A first estimate, not fitted: the slope of Apache Kafka 4.4's
    CPU (one node) against accepted sends between 100 and 500 dm sends/s in the
    baseline sittings of 2026-12-01 23:08 and 23:17 UTC (v3 3 servers, v4 2+2; +4.7 to
    +10.9 points of a core for ~398 more records/s, mean 8.1: ~200 µs/record;
    docs/RESULTS.md, "Scale-out"). The broker's idle CPU (45-68 % of a core at 100/s
    there, the consumers' 10 ms polls and the JVM) is not modelled; 0 turns the
    broker's CPU off (an infinitely fast broker, as before)"""
    kafka_request_timeout: float = 3.0
    kafka_session_timeout: float = 3.9
    """a dead consumer's partitions move once its membership entry expired (3 s) and
    the others saw the new member list twice (`imlab.kafka.Membership`): 3.7-3.9 s"""
    kafka_stale_window: float = 1.0
    """after a broker restart, publishes are acked and lost until the link's watchdog
    (one check a second) notices and re-creates the topics"""
    kafka_max_records: int = 500
    kafka_reset: float = 1.0
    """after the stale-ack window, publishes fail while each process re-creates its
    topics and producer (`KafkaLink._reset`)"""
    kafka_durable: bool = True
    """Apache Kafka keeps its log across a restart; Tansu (memory only) does not, and
    only then do the stale-ack window and the topic re-creation (`kafka_reset`) apply"""
    kafka_brokers: int = 1
    kafka_restart: float = 5.5
    """a stopped Apache Kafka node answers again this long after its window ends (a JVM
    start on the 2 loaded cores): broker-down:3s windows lasted 8.3-9.4 s in `imlab
    compare` and the live-fault tests, 2026-12-01 (Tansu restarts in milliseconds)"""
    kafka_failover: float = 2.0
    """with three brokers, one stopped or killed broker's partitions are unavailable this
    long (leader election and the clients' metadata refresh), and nothing is lost"""
    redis_failover: float = 2.3
    """a SIGKILLed Redis Sentinel master (`redis-master-kill`): writes fail this long,
    until the sentinels promote the replica (down-after 1 s; measured 0.95-3.2 s, 2.2-2.3
    in the stage tests, on the 2-core machine, docs/SERVICES.md); the model takes it for
    Redis down that long"""
    kafka_rejoin: float = 1.5
    """after a broker restart, consumers deliver nothing until the watchdog noticed the
    empty broker and a fresh consumer took its partitions (4.5 s after a 3 s stop)"""
    # PostgreSQL, v5's system of record (`imlab/sqlstore.py`). First estimates for a
    # local PostgreSQL on this 2-core machine, not measured yet: to be calibrated from
    # real v5 runs (`imlab calibrate`, #14). The server's CPU is one FIFO server (the
    # backends share two cores with everything else); a commit's WAL flush is a delay
    # that does not hold the CPU, and commits finish in commit order (group commit).
    db_link: Dist = Dist(0.0001, 0.3)
    """one way between a process and PostgreSQL (loopback TCP, asyncpg's protocol)"""
    db_query: Dist = Dist(0.00015, 0.5)
    """PostgreSQL CPU of one indexed read or small write (a prepared statement)"""
    db_transaction: Dist = Dist(0.0004, 0.5)
    """PostgreSQL CPU of v5's send transaction (dedup read, seq upsert, message and
    outbox inserts, commit): a few hundred µs"""
    db_fsync: Dist = Dist(0.001, 0.5)
    """a commit's WAL flush to disk: the latency a commit adds after its CPU"""
    db_timeout: float = 5.0
    """asyncpg's command_timeout in `SqlStore`: a call with no answer fails after this"""
    # A v3 server's or v4 worker's consumer: CPU to decode and handle one record.
    worker_record: Dist = Dist(0.0005, 0.5)
    # The load generator, when a run of this machine is reproduced (0: every simulated
    # client is its own device, as in a scale run).
    loadgen_processes: int = 0
    loadgen_event: Dist = Dist(0.000165, 0.5)
    """CPU of one Locust process per client event (a send and its ack, or a receipt)"""
    # The machine the processes run on, when a run of this machine is reproduced.
    machine_cores: float = 0.0
    """cores' worth of CPU shared by every process of the run, the load tool's included
    (0: every process has a core of its own, as in a scale model); `imlab calibrate`
    takes the most CPU the runs' processes got together when a run saturated the
    machine, else the machine's core count; see `sim.engine.Machine`"""
    idle_cpu: dict[str, float] = field(default_factory=dict)
    """cores' worth of CPU one process of each kind burns with no load (`front`,
    `worker`, `redis`, `kafka`, `loadgen`): the intercepts `imlab calibrate` fits;
    only a shared machine (`machine_cores`) feels them"""
    machine_outside: float = 0.0
    """cores' worth of CPU processes outside the run used meanwhile (a real run's
    `other_processes_cpu_pct` / 100), when its twin reproduces the machine as it was"""
    # The client SDK and the load tool's user (imlab/client/, loadtest/users.py).
    call_timeout: float = 10.0
    gap_sync_delay: float = 0.5
    reconnect_min: float = 0.2
    reconnect_max: float = 2.0
    sync_page: int = 200
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    """where these numbers came from (calibration runs, fitted values)"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Params:
        """Read a parameter file's dict; unknown keys are refused, missing ones default."""
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown parameters: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(getattr(DEFAULTS, key), Dist):
                if isinstance(value, int | float):
                    value = {"mean": float(value)}
                values[key] = Dist(float(value["mean"]), float(value.get("cv", 0.0)))
            else:
                values[key] = value
        return replace(DEFAULTS, **values)

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    def with_(self, **changes: Any) -> Params:
        return replace(self, **changes)


DEFAULTS = Params(
    source={
        "how": "imlab calibrate on three real v2 runs on this 2-core machine (group at 80 "
        "and 320 sends/s, dm at 80 sends/s; docs/RESULTS.md), rounded; the Kafka, worker, "
        "relay, connect and token figures are not in any v2 run: they were set by hand "
        "so that the v4 model's ack and push medians match one real v4 group run at 80 "
        "sends/s (docs/RESULTS.md); loadgen_processes is 0 so that every simulated "
        "client is its own device; the PostgreSQL (db_*) and redis_failover figures of "
        "v5 are first estimates, not yet calibrated against any real v5 run",
    }
)


def load_params(
    path: Path | str | None, stage: str | None = None, *, this_machine: bool = False
) -> Params:
    """The parameter file at `path`; without one, `stage`'s defaults (`stage_defaults`),
    or the built-in ones when no stage is named."""
    if path is None:
        return DEFAULTS if stage is None else stage_defaults(stage, this_machine=this_machine)
    return Params.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def stage_defaults(stage: str, *, this_machine: bool = False) -> Params:
    """The stage's calibrated parameters (`CALIBRATION_DIR/<stage>.json`, the built-in
    defaults for a stage without one). Calibration runs share this machine's cores with
    the load tool; unless `this_machine`, that machine is dropped (each process on a
    core of its own, every client its own device), which is what a scale model wants,
    and so is the broker's per-record cost fitted at the ladders' low loads (0.7-1.5 ms:
    there every record costs the broker its own produce, fetch and offset commit, which
    batching shares out at scale); the scale model keeps `DEFAULTS.kafka_record`, the
    slope between 100 and 500 sends/s."""
    path = CALIBRATION_DIR / f"{stage}.json"
    if not path.exists():
        return DEFAULTS
    params = Params.from_dict(json.loads(path.read_text(encoding="utf-8")))
    if this_machine:
        return params
    return params.with_(machine_cores=0, loadgen_processes=0, kafka_record=DEFAULTS.kafka_record)
