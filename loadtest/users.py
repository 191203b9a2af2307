"""The Locust side of a load run: one `ChatUser` per planned user, each driving a
`LoadClient` through its part of the plan (fixed send schedule, drops and returns, the
final catch-up), sharing its process's `WorkerProcess` (loadtest.worker), which talks
to the runner through `loadtest.protocol`.
Imported only inside Locust processes (it pulls in gevent's monkey-patching).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import gevent
from locust import User, constant, task
from locust.env import Environment

from imlab.client import ClientError, ConnectRefused
from imlab.experiment.history import WARMUP_PREFIX
from imlab.experiment.scenarios import ChurnClock
from imlab.protocol import ErrorCode
from loadtest.loadclient import LoadClient
from loadtest.worker import HOUSEKEEPING_S, token_for, worker_process

log = logging.getLogger("imlab.loadtest")

GAP_PATIENCE_S = 0.5  # a seq gap older than this is repaired with sync
CONNECT_ATTEMPTS = 5
RETRY_S = 0.5  # a failed return is tried again after this long


class AckError(Exception):
    """An error ack, reported to Locust as a failed request."""


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
            token=token_for(self.plan, user),
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
        self._warm_up()
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
            if self.client.online or self.client.shut_out:
                # shut out (revoked): the send fails at once, recorded never acked
                self._send(to, group, k, t)
            else:
                self.w.stats["skipped_offline"] += 1
            k += 1
        self.back_at = min(self.back_at, time.time())  # the send window is over: come back
        while not self.w.final.wait(HOUSEKEEPING_S):
            if not self.client.online and time.time() >= self.back_at:
                self._come_back()
            self._repair_gaps(time.time())
        if not self.client.online and not self.client.shut_out:
            self._come_back()
        self._finish(final_sync=not self.client.shut_out)

    def _warm_up(self) -> None:
        """The warm-up's slots, before the send window: the same schedule, sent with
        `WARMUP_PREFIX` client ids, which the client records nothing for. A user that
        churns sits it out (its clock starts with the window)."""
        assert self.client is not None and self.w.send_start is not None
        if self.w.warm_start is None or self.plan.churns(self.index):
            return
        to, group = self.plan.target(self.index)
        schedule = self.plan.schedule(self.index, self.w.warm_start)
        k = schedule.slot_at_or_after(time.time())
        while (t := schedule.time_of(k)) < self.w.send_start:
            self._wait_until(t, self.w.send_start)
            if time.time() >= self.w.send_start:
                break
            if self.client.online:
                with contextlib.suppress(ClientError):
                    self.client.send(
                        to=to,
                        group=group,
                        body=self.plan.body(self.index, k),
                        client_msg_id=f"{WARMUP_PREFIX}{self.client.core.next_client_msg_id()}",
                    )
                self.w.stats["warmup_sends"] += 1
            k += 1

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
        if self.client.shut_out:
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
        except ConnectRefused as exc:
            self._report("reconnect", began, exc)
            if exc.code == ErrorCode.UNAUTHORIZED:  # revoked: it stays out, quietly
                self.client.shut_out = True
                return
            self.back_at = time.time() + RETRY_S
            return
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
        if not self.client.inbox.pending or not self.client.online or self.client.shut_out:
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
            self.w.stats["shut_out"] += client.shut_out
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
