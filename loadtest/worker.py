"""What one Locust process shares among its users: the plan, the process's history
file, the runner's orders (the control file) and the status it reports back, through
`loadtest.protocol`. Imported only inside Locust processes (gevent)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust.env import Environment

from imlab import stages
from loadtest import protocol
from loadtest.loadclient import CountingRecorder
from loadtest.plan import LoadPlan

log = logging.getLogger("imlab.loadtest")

HOUSEKEEPING_S = 0.2
STATUS_EVERY_S = 0.5
LATE_S = 0.1  # a send this far behind its schedule counts as late


class WorkerProcess:
    """What one Locust process shares among its users."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.plan = protocol.read_plan()
        self.dir = protocol.loadgen_dir(self.plan)
        runner = environment.runner
        self.index = int(getattr(runner, "worker_index", 0) or 0)
        self.pid = os.getpid()
        name = f"history-w{self.index}-{self.pid}.jsonl"
        self.recorder = CountingRecorder(Path(self.plan.run_dir) / name)
        self.stats: dict[str, int] = {
            "started": 0,
            "online": 0,
            "ever_connected": 0,
            "connect_failed": 0,
            "finished": 0,
            "final_synced": 0,
            "drops": 0,
            "silent_drops": 0,
            "returns": 0,
            "dropped_pushes": 0,
            "skipped_offline": 0,
            "skipped_after_window": 0,  # slots still unsent when the send window closed
            "late_sends": 0,
            "send_errors": 0,
            "shut_out": 0,  # users the stage shut out (tokens revoked): they idle
            "stopped_early": 0,  # stopped by Locust before the part was played
            "surplus": 0,  # Locust users beyond the plan (they idle)
            "warmup_sends": 0,  # sent before the send window, unrecorded
        }
        self.lag_max = 0.0  # since the last status write
        self.lag_max_all = 0.0
        self.send_start: float | None = None
        self.send_end: float | None = None
        self.warm_start: float | None = None
        self.go = Event()
        self.final = Event()
        self._control = protocol.ControlReader(self.dir)
        self._last_status = 0.0
        self._closed = False
        self._loop = gevent.spawn(self._housekeeping)

    # --- slots: each Locust user takes the next planned identity, across processes

    def claim_slot(self) -> int:
        return protocol.claim_slot(self.dir)

    # --- control and status

    def _housekeeping(self) -> None:
        while not self._closed:
            try:
                self._read_control()
                if time.time() - self._last_status >= STATUS_EVERY_S:
                    self.write_status()
                    self.recorder.flush()
            except Exception:
                log.exception("loadgen housekeeping failed")
            gevent.sleep(HOUSEKEEPING_S)

    def _read_control(self) -> None:
        control = self._control.poll()
        if control is None:
            return
        if control.send_start is not None and control.send_end is not None and not self.go.is_set():
            self.send_start = control.send_start
            self.send_end = control.send_end
            self.warm_start = control.warm_start
            self.go.set()
        if control.final:
            self.final.set()

    def write_status(self) -> None:
        self._last_status = time.time()
        cpu = os.times()
        status = {
            "pid": self.pid,
            "worker": self.index,
            "t": self._last_status,
            **self.stats,
            "events": dict(self.recorder.counts),
            "lag_max_s": round(self.lag_max, 4),
            "lag_max_all_s": round(self.lag_max_all, 4),
            "cpu_s": round(cpu.user + cpu.system, 3),
        }
        self.lag_max = 0.0
        protocol.write_status(self.dir, self.pid, status)

    def note_lag(self, lag: float) -> None:
        self.lag_max = max(self.lag_max, lag)
        self.lag_max_all = max(self.lag_max_all, lag)
        if lag > LATE_S:
            self.stats["late_sends"] += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.write_status()
        self.recorder.close()


_worker: WorkerProcess | None = None


def worker_process(environment: Environment) -> WorkerProcess:
    global _worker
    if _worker is None:
        _worker = WorkerProcess(environment)
        environment.events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
    return _worker


def _on_quitting(**_: Any) -> None:
    if _worker is not None:
        _worker.close()


def token_for(plan: LoadPlan, user: str) -> str | None:
    if not stages.stage(plan.stage).uses_tokens:
        return None
    auth = importlib.import_module("imlab.auth")  # the v4 stage's tokens; only needed there
    secret = os.environ.get("IMLAB_SECRET", "")
    token: str = auth.issue_token(user, secret, ttl=plan.token_ttl)
    return token
