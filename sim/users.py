"""The load tool's users, as `loadtest/users.py` is the real Locust user: one greenlet
per user running its sends on a fixed open-loop schedule, its churn (drops and
returns), its gap repairs and its final catch-up, one after another.

- a send blocks the greenlet until its ack, and slots that came due meanwhile go
  out late (their latency counts from the slot);
- while a churning user is offline its slots are skipped;
- a silent drop leaves the server pushing into a dead connection; a clean drop
  tells the server; a failed return is tried again 0.5 s later.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from sim.client import User
from sim.server import Steps

if TYPE_CHECKING:
    from sim.stage import StageModel

__all__ = ["RETRY_BACK", "LoadUsers"]

RETRY_BACK = 0.5  # loadtest.users.RETRY_S: a failed return is tried again after this long


class LoadUsers:
    """Every user's greenlet: a queue of actions (send, drop, back, repair, final)."""

    def __init__(self, model: StageModel) -> None:
        self.m = model
        self.env = model.env
        self.counts = model.counts
        self.history = model.history
        self.client = model.client

    def post(self, user: User, action: str, arg: float) -> None:
        """Give the user's greenlet an action; it runs now or after the current one."""
        if action == "repair" and any(a == "repair" for a, _ in user.queue):
            return
        user.queue.append((action, arg))
        if not user.busy:
            self._wake(user)

    def _wake(self, user: User) -> None:
        """Run the greenlet's next action, now or when it stops waiting for an ack."""
        user.busy = True
        if user.free_at > self.env.now:
            self.m.at(user.free_at, partial(self._next, user))
        else:
            self._next(user)

    def _next(self, user: User) -> None:
        action, arg = user.queue.popleft()
        self.env.process(self._run_action(user, action, arg))

    def _post_now(self, user: User, action: str) -> None:
        self.post(user, action, self.env.now)

    def _run_action(self, user: User, action: str, arg: float) -> Steps:
        try:
            if action == "send":
                if user.online:
                    yield from self.client.send(user, arg)
                else:
                    self.counts.inc("skipped_offline")
            elif action == "drop":
                self.drop(user)
            elif action == "back":
                if not user.online:
                    yield from self.back(user)
            elif action == "repair":
                user.repairing = False
                if user.online and user.pending:
                    yield from self.client.catch_up(user, only=list(user.pending))
            elif action == "final":
                if not user.online and user.churn is not None:
                    yield from self.back(user)
                if user.online:
                    yield from self.client.catch_up(user)
                    if user.pending:
                        yield from self.client.catch_up(user, only=list(user.pending))
                    self.counts.inc("final_synced")
                user.finished = True
        finally:
            if user.queue:
                self._wake(user)
            else:
                user.busy = False

    def drop(self, user: User) -> None:
        """Churn: the user goes offline (silently or cleanly) and comes back later."""
        env = self.env
        if not user.online or env.now >= self.m.send_end:
            return
        clock = user.churn
        silent = clock.silent()
        self.counts.inc("drops")
        conn = user.conn
        if silent:
            self.counts.inc("silent_drops")
            user.online = False
            if conn is not None:
                conn.silent = True
                conn.closes_at = env.now
            if user.traced and self.history is not None:
                self.history.disconnect(
                    env.now,
                    user.name,
                    node=conn.node.name if conn else None,
                    reason="network lost (silent: the server is not told)",
                )
        else:
            self.client.close(user, tell_server=True)
        user.back_at = env.now + clock.offline_for()
        self.m.at(user.back_at, lambda: self.post(user, "back", self.env.now))

    def back(self, user: User) -> Steps:
        """The user comes back: reconnect (and catch up), then schedule the next drop."""
        conn = user.conn
        if conn is not None and conn.silent:
            # The dead connection is closed now, quietly (no history event).
            self.env.process(self.m.disconnected(conn))
        user.back_at = math.inf
        ok = yield from self.client.connect(user)
        if ok:
            self.counts.inc("returns")
            if self.env.now < self.m.send_end and user.churn is not None:
                user.next_drop = self.env.now + user.churn.online_for()
                self.m.at(user.next_drop, partial(self._post_now, user, "drop"))
        else:  # refused or unreachable: the load tool's user tries again half a second later
            user.back_at = self.env.now + RETRY_BACK
            self.m.at(user.back_at, partial(self._post_now, user, "back"))

    # ------------------------------------------------------------ the run's phases

    def spawn(self, spread: float) -> None:
        """Start every greenlet at a random moment within `spread` seconds: it connects."""
        m = self.m
        for user in m.users:
            m.at(spread * m.rng.random(), partial(self._first, user))

    def _first(self, user: User) -> None:
        user.busy = True

        def first() -> Steps:
            try:
                yield from self.client.connect(user)
            finally:
                if user.queue:
                    self._wake(user)
                else:
                    user.busy = False

        self.env.process(first())

    def open_window(self) -> None:
        """The send window is open: the send clock and the churn clocks start."""
        m = self.m
        self.env.process(self._send_clock())
        for u in m.sc.churners:
            user = m.users[u]
            user.churn = m.sc.churn_clock(u)
            user.next_drop = m.send_start + user.churn.online_for()
            m.at(user.next_drop, partial(self._post_now, user, "drop"))
        m.at(m.send_end, self._window_closed)

    def _send_clock(self) -> Steps:
        """Every user's slots `send_start + phase + k / rate`, in time order."""
        env = self.env
        m = self.m
        period = 1.0 / m.sc.rate
        order = sorted(range(len(m.users)), key=lambda u: m.sc.phases[u])
        phases = [m.sc.phases[u] for u in order]
        users = [m.users[u] for u in order]
        k = 0
        while True:
            base = m.send_start + k * period
            if base >= m.send_end:
                return
            for ph, user in zip(phases, users, strict=True):
                t = base + ph
                if t >= m.send_end:
                    return
                if t > env.now + 0.001:  # slots due within a millisecond share a wake-up
                    yield env.timeout(t - env.now)
                self.slot(user, t)
            k += 1

    def slot(self, user: User, t: float) -> None:
        """A slot comes due: skipped while offline, else queued on the greenlet."""
        if not user.busy and not user.online:
            self.counts.inc("skipped_offline")
            return
        user.queue.append(("send", t))
        if not user.busy:
            self._wake(user)

    def _window_closed(self) -> None:
        for user in self.m.users:
            if user.churn is not None and not user.online:
                self.post(user, "back", self.env.now)

    def final(self, t: float) -> None:
        """Order every user's final catch-up (after a return, for a churning user)."""
        for user in self.m.users:
            self.post(user, "final", t)
