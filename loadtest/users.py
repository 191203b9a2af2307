"""The Locust side of a load run: one `ChatUser` per planned user, each driving a
`SyncChatClient` through its part of the plan (fixed send schedule, drops and
returns, the final catch-up), and one `WorkerProcess` per Locust process that owns
the process's history file, follows the runner's control file and reports status.

The runner and these processes talk through files in `<run>/loadgen/`: the plan
(written once), `control.json` (send window, then the order for the final sync) and
one `status-<pid>.json` per process (counts for progress, settling and the end).
Imported only inside Locust processes (it pulls in gevent's monkey-patching).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust import User, constant, task
from locust.env import Environment

from imlab import stages
from imlab.client import ClientError, HistoryRecorder, SyncChatClient
from imlab.experiment.scenarios import ChurnClock
from loadtest.plan import LoadPlan

log = logging.getLogger("imlab.loadtest")

PLAN_ENV = "IMLAB_LOAD_PLAN"
HOUSEKEEPING_S = 0.2
STATUS_EVERY_S = 0.5
GAP_PATIENCE_S = 0.5  # a seq gap older than this is repaired with sync
LATE_S = 0.1  # a send this far behind its schedule counts as late
CONNECT_ATTEMPTS = 5
RETRY_S = 0.5  # a failed return is tried again after this long


class AckError(Exception):
    """An error ack, reported to Locust as a failed request."""


# ---------------------------------------------------------------- the client


class LoadClient(SyncChatClient):
    """A `SyncChatClient` that can drop off and come back as the churn scenario needs.

    `drop(silent=True)` models a device that loses its network: the server is not
    told and keeps pushing into the connection, and nothing that arrives reaches the
    application. Python-socketio keeps answering pings, which stands for a server
    ping timeout (45 s by default) longer than the offline spell. `come_back()` closes
    that dead connection (as the server's timeout eventually would) and connects anew.
    """

    def __init__(self, user: str, urls: list[str], **kw: Any) -> None:
        super().__init__(user, urls, **kw)
        self.silenced = False
        self.online = False
        self.dropped_pushes = 0
        self._quiet_disconnect = False

    def connect(self, timeout: float = 10.0) -> None:
        super().connect(timeout)
        self.online = True

    def _note_disconnect(self, reason: str | None) -> None:
        if not self._quiet_disconnect:  # closing a connection already counted as lost
            super()._note_disconnect(reason)

    def _on_message(self, data: Any) -> None:
        if self.silenced:
            self.dropped_pushes += 1
            return
        super()._on_message(data)

    def handle_group_created(self, data: Any) -> None:
        if not self.silenced:
            super().handle_group_created(data)

    def drop(self, *, silent: bool) -> None:
        self.online = False
        if silent:
            self.silenced = True
            self.record("disconnect", reason="network lost (silent: the server is not told)")
        else:
            self.disconnect()

    def come_back(self) -> None:
        if self.silenced:
            self._quiet_disconnect = True
            try:
                self.disconnect()
            finally:
                self._quiet_disconnect = False
            self.silenced = False
        self.connect()


# ---------------------------------------------------------------- per process


class CountingRecorder(HistoryRecorder):
    """A history recorder that also counts what it records, for the status file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.counts: dict[str, int] = {}

    def record(self, ev: str, **fields: Any) -> None:
        key = f"recv_{fields.get('via')}" if ev == "recv" else ev
        if ev == "ack":
            key = "ack_ok" if fields.get("ok") else "ack_err"
        self.counts[key] = self.counts.get(key, 0) + 1
        super().record(ev, **fields)


class WorkerProcess:
    """What one Locust process shares among its users."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.plan = LoadPlan.load(os.environ[PLAN_ENV])
        self.dir = Path(self.plan.run_dir) / "loadgen"
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
            "stopped_early": 0,  # stopped by Locust before the part was played
            "surplus": 0,  # Locust users beyond the plan (they idle)
        }
        self.lag_max = 0.0  # since the last status write
        self.lag_max_all = 0.0
        self.send_start: float | None = None
        self.send_end: float | None = None
        self.go = Event()
        self.final = Event()
        self._control_mtime = 0.0
        self._last_status = 0.0
        self._closed = False
        self._loop = gevent.spawn(self._housekeeping)

    # --- slots: each Locust user takes the next planned identity, across processes

    def claim_slot(self) -> int:
        with open(self.dir / "slots", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read().strip() or 0)
            f.seek(0)
            f.truncate()
            f.write(str(n + 1))
            f.flush()
        return n

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
        path = self.dir / "control.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        try:
            control = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # half-written; read it next time
        self._control_mtime = mtime
        if control.get("send_start") is not None and not self.go.is_set():
            self.send_start = float(control["send_start"])
            self.send_end = float(control["send_end"])
            self.go.set()
        if control.get("final"):
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
        tmp = self.dir / f".status-{self.pid}.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.dir / f"status-{self.pid}.json")

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


def _token(plan: LoadPlan, user: str) -> str | None:
    if not stages.stage(plan.stage).uses_tokens:
        return None
    auth = importlib.import_module("imlab.auth")  # the v4 stage's tokens; only needed there
    secret = os.environ.get("IMLAB_SECRET", "")
    token: str = auth.issue_token(user, secret, ttl=plan.token_ttl)
    return token


# ---------------------------------------------------------------- the user


class ChatUser(User):
    """One planned user: connects, waits for the send window, sends on its schedule
    (dropping off and coming back if it churns), then waits for the runner's order
    and runs the final catch-up (the seed's latest/sync rule) before it closes."""

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.w = worker_process(environment)
        self.plan = self.w.plan
        self.index = -1
        self.client: LoadClient | None = None
        self.churn: ChurnClock | None = None
        self.next_drop = math.inf
        self.back_at = math.inf
        self.pending_since: float | None = None
        self.done = False

    # --- locust hooks

    def on_start(self) -> None:
        self.w.stats["started"] += 1
        self.index = self.w.claim_slot()

    def on_stop(self) -> None:
        if not self.done:
            self.w.stats["stopped_early"] += 1
            self._finish(final_sync=False)

    @task
    def live(self) -> None:
        if self.index >= self.plan.n:
            log.error("more Locust users than planned users; user slot %d idles", self.index)
            self.w.stats["surplus"] += 1
            self._finish(final_sync=False)
        elif self._first_connect():
            self._play()
        else:
            self._finish(final_sync=False)
        while True:  # the part is played; Locust stops us when the run ends
            gevent.sleep(3600)

    # --- the part

    def _first_connect(self) -> bool:
        user = self.plan.users[self.index]
        self.client = LoadClient(
            user,
            self.plan.endpoints,
            token=_token(self.plan, user),
            recorder=self.w.recorder,
        )
        for attempt in range(CONNECT_ATTEMPTS):
            if self._connect():
                self.w.stats["ever_connected"] += 1
                return True
            gevent.sleep(0.2 * (2**attempt))
        self.w.stats["connect_failed"] += 1
        return False

    def _connect(self) -> bool:
        assert self.client is not None
        began = time.time()
        try:
            self.client.connect()
        except Exception as exc:  # refused, unreachable, or no ack for hello/catch-up
            self._report("connect", began, exc)
            return False
        self._report("connect", began, None)
        self.w.stats["online"] += 1
        return True

    def _play(self) -> None:
        assert self.client is not None
        self.w.go.wait()
        assert self.w.send_start is not None and self.w.send_end is not None
        send_end = self.w.send_end
        now = time.time()
        schedule = self.plan.schedule(self.index, self.w.send_start)
        if self.plan.churns(self.index):
            self.churn = self.plan.churn_clock(self.index)
            self.next_drop = max(now, self.w.send_start) + self.churn.online_for()
        to, group = self.plan.target(self.index)
        k = schedule.slot_at_or_after(now)
        while (t := schedule.time_of(k)) < send_end:
            self._wait_until(t, send_end)
            if time.time() >= send_end:
                # Held up past the window (a call that hung in a crash): the other users
                # may have made their final sync already, so a send now would look lost.
                self.w.stats["skipped_after_window"] += schedule.slots_between(k, send_end)
                break
            if self.client.online:
                self._send(to, group, k, t)
            else:
                self.w.stats["skipped_offline"] += 1
            k += 1
        self.back_at = min(self.back_at, time.time())  # the send window is over: come back
        while not self.w.final.wait(HOUSEKEEPING_S):
            if not self.client.online and time.time() >= self.back_at:
                self._come_back()
            self._repair_gaps(time.time())
        if not self.client.online:
            self._come_back()
        self._finish(final_sync=True)

    def _wait_until(self, t: float, send_end: float) -> None:
        while True:
            now = time.time()
            self._churn(now, send_end)
            if now >= t:
                return
            self._repair_gaps(now)
            wake = min(t, self.next_drop, self.back_at)
            gevent.sleep(min(max(0.0, wake - now), 0.25))

    def _churn(self, now: float, send_end: float) -> None:
        assert self.client is not None
        if self.churn is None:
            return
        if self.client.online and now >= self.next_drop and now < send_end:
            silent = self.churn.silent()
            self.client.drop(silent=silent)
            self.w.stats["online"] -= 1
            self.w.stats["drops"] += 1
            self.w.stats["silent_drops"] += silent
            self.back_at = now + self.churn.offline_for()
            self.next_drop = math.inf
        elif not self.client.online and now >= self.back_at:
            self._come_back()
            if self.client.online:
                self.next_drop = time.time() + self.churn.online_for()

    def _come_back(self) -> None:
        assert self.client is not None
        self.back_at = math.inf
        began = time.time()
        try:
            self.client.come_back()
        except Exception as exc:  # the stage refused or is unreachable: try again soon
            self._report("reconnect", began, exc)
            self.back_at = time.time() + RETRY_S
            return
        self._report("reconnect", began, None)
        self.w.stats["online"] += 1
        self.w.stats["returns"] += 1

    def _send(self, to: str | None, group: str | None, k: int, intended: float) -> None:
        assert self.client is not None
        began = time.time()
        self.w.note_lag(began - intended)
        body = self.plan.body(self.index, k)
        try:
            ack = self.client.send(to=to, group=group, body=body, intended=intended)
        except ClientError as exc:
            self.w.stats["send_errors"] += 1
            self._report("send", began, exc, len(body))
            return
        error = None
        if not ack.get("ok"):
            self.w.stats["send_errors"] += 1
            error = AckError((ack.get("error") or {}).get("code", "unknown"))
        self._report("send", began, error, len(body))

    def _repair_gaps(self, now: float) -> None:
        assert self.client is not None
        if not self.client.inbox.pending or not self.client.online:
            self.pending_since = None
            return
        if self.pending_since is None:
            self.pending_since = now
        elif now - self.pending_since >= GAP_PATIENCE_S:
            self.pending_since = None
            with contextlib.suppress(ClientError):
                self.client.repair_gaps()

    def _finish(self, *, final_sync: bool) -> None:
        """The end of the part: the final catch-up (when ordered), then close."""
        self.done = True
        client = self.client
        if client is not None:
            if final_sync and client.online:
                began = time.time()
                try:
                    client.catch_up()
                    client.repair_gaps()
                    self.w.stats["final_synced"] += 1
                    self._report("final_sync", began, None)
                except ClientError as exc:
                    self._report("final_sync", began, exc)
            self.w.stats["dropped_pushes"] += client.dropped_pushes
            if client.online:
                self.w.stats["online"] -= 1
            with contextlib.suppress(Exception):
                client.close()
            client.online = False
        self.w.stats["finished"] += 1

    def _report(self, name: str, began: float, exc: Exception | None, size: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="sio",
            name=name,
            response_time=(time.time() - began) * 1000.0,
            response_length=size,
            exception=exc,
            context={},
        )
