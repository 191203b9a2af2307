"""The Node.js load generator (`imlab load --generator node`): the same plan, control
file, status files and history as the Locust users, played by `loadtest/nodegen/gen.js`
on the official Socket.IO client, for rates one Locust process per core cannot offer.

The runner writes each user's part once (`write_parts`: name, token, home endpoint,
target, conversation and schedule phase), so the JavaScript needs no copy of the plan's
arithmetic; this module installs the client from npm into the cache and runs the
processes, one slice of the users each.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from imlab import protocol as p
from imlab import stages
from imlab.client.core import ordered_endpoints
from imlab.kafka_dist import cache_dir
from loadtest.plan import LoadPlan

GEN_JS = Path(__file__).with_name("nodegen") / "gen.js"
CLIENT = "socket.io-client@4.8.1"
PARTS_FILE = "parts.json"


class NodeGenError(RuntimeError):
    """Node.js or its Socket.IO client is missing and cannot be installed."""


def npm_install(folder: str, spec: str, package: str) -> Path:
    """npm's `spec` in <cache>/<folder>/, installed once; returns its node_modules
    (the Node generator's client here, the peer's server in benchmarks/peer.py)."""
    prefix = cache_dir() / folder
    modules = prefix / "node_modules"
    if (modules / package / "package.json").exists():
        return modules
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise NodeGenError(f"{package} needs `{tool}` on PATH (apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", spec],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise NodeGenError(f"npm install {spec} failed:\n{done.stderr[-2000:]}")
    return modules


def install_client() -> Path:
    """npm's socket.io-client in <cache>/nodegen/ (once); returns its node_modules."""
    return npm_install("nodegen", CLIENT, "socket.io-client")


def client_version() -> str | None:
    with contextlib.suppress(OSError, ValueError):
        pkg = cache_dir() / "nodegen/node_modules/socket.io-client/package.json"
        return str(json.loads(pkg.read_text())["version"])
    return None


def parts(plan: LoadPlan, secret: str) -> list[dict[str, Any]]:
    """Each planned user's part: what gen.js needs to play it."""
    tokens = stages.stage(plan.stage).uses_tokens
    if tokens:
        from imlab.auth import issue_token
    out = []
    for index, user in enumerate(plan.users):
        to, group = plan.target(index)
        conv = p.group_conv(group) if group is not None else p.dm_conv(user, to or "")
        out.append(
            {
                "index": index,
                "user": user,
                "token": issue_token(user, secret, ttl=plan.token_ttl) if tokens else None,
                "url": ordered_endpoints(plan.endpoints, user)[0],
                "to": to,
                "group": group,
                "conv": conv,
                "phase": plan.phase(index),
            }
        )
    return out


def write_parts(plan: LoadPlan, loadgen: Path, secret: str, spawn_rate: float) -> Path:
    """Refuses what gen.js does not play: churn and step shapes stay with Locust."""
    if plan.churn.fraction > 0 or plan.shape is not None or plan.scenario == "burst":
        raise ValueError(
            "the Node generator plays steady dm and group schedules only "
            "(no churn, no step shape, no burst): use --generator locust"
        )
    doc = {
        "rate": plan.rate,
        "body_bytes": plan.body_bytes,
        "spawn_rate": spawn_rate,
        "users": parts(plan, secret),
    }
    path = loadgen / PARTS_FILE
    path.write_text(json.dumps(doc))
    return path


class NodeGenerator:
    """`node gen.js` in `processes` processes, each in its own session, one log."""

    def __init__(self, parts_path: Path, processes: int, modules: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "NODE_PATH": str(modules), "NODE_ENV": "production"}
        self.argv = ["node", str(GEN_JS), str(parts_path), "<slice>", str(processes)]
        self.procs = [
            subprocess.Popen(
                ["node", str(GEN_JS), str(parts_path), str(i), str(processes)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            for i in range(processes)
        ]
        self._stopped = False
        self.returncode: int | None = None
        atexit.register(self.stop, 5.0)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.poll() is None]

    def running(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def exit_codes(self) -> list[int | None]:
        return [proc.poll() for proc in self.procs]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (each flushes its history and status), then SIGKILL what is left."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        atexit.unregister(self.stop)
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._log.close()
        codes = [proc.returncode for proc in self.procs]
        self.returncode = next((c for c in codes if c), 0)
        return self.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


if __name__ == "__main__":  # `python -m loadtest.nodegen`: install the client (make test does)
    print(f"socket.io-client for the Node generator: {install_client()}")
