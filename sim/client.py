"""The clients, as `imlab/client/` is the real client SDK: connect to the first live
node in the user's order, call and wait for the ack, keep an inbox in seq order, catch
up by `latest` and `sync` after every (re)connect, repair gaps, reconnect with backoff.

- a call blocks until its ack (10 s at most);
- after every (re)connect the client asks `latest` and syncs each conversation
  where its max seq is behind (pages of 200);
- a push ahead of a gap waits in the inbox, and the gap is synced 0.5-0.75 s later
  (on the user's greenlet, `sim.users`);
- when its node dies the client reconnects, with backoff, to the next live node.
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from sim.engine import FifoServer, Refused
from sim.ledger import ERROR, OK
from sim.server import FEATURE_HISTORY, Conn, Msg, Node, ProtocolRefusal, Steps, Unavailable
from sim.store import Conv

if TYPE_CHECKING:
    from collections.abc import Callable

    from sim.stage import StageModel

__all__ = ["Client", "User"]


class User:
    """One simulated client: its connection, inbox (max seq and buffered pushes per
    conversation) and the greenlet's queue of actions."""

    __slots__ = (
        "back_at",
        "busy",
        "churn",
        "conn",
        "convs",
        "down_last",
        "endpoints",
        "finished",
        "free_at",
        "idx",
        "loadgen",
        "max_seq",
        "name",
        "next_drop",
        "online",
        "pending",
        "queue",
        "repairing",
        "sends",
        "traced",
    )

    def __init__(self, idx: int, name: str, convs: list[Conv], endpoints: list[int]) -> None:
        self.idx = idx
        self.name = name
        self.convs = convs
        self.traced = any(c.traced for c in convs)
        self.endpoints = endpoints
        self.conn: Conn | None = None
        self.online = False
        self.busy = False
        self.free_at = 0.0  # the greenlet is blocked until then (waiting for an ack)
        self.queue: deque[tuple[str, float]] = deque()
        self.max_seq: dict[int, int] = {}
        self.pending: dict[int, dict[int, tuple[int, str]]] = {}  # conv -> seq -> (id, via)
        self.repairing = False
        self.churn: Any = None
        self.next_drop = math.inf
        self.back_at = math.inf
        self.down_last = 0.0
        self.loadgen: FifoServer | None = None
        self.sends = 0
        self.finished = False


class Client:
    """The client SDK of every simulated user, calling the model's server processes."""

    def __init__(self, model: StageModel) -> None:
        self.m = model
        self.env = model.env
        self.p = model.p
        self.counts = model.counts
        self.ledger = model.ledger
        self.history = model.history

    # ------------------------------------------------------------ calls

    def request(
        self,
        user: User,
        handler: Callable[[Node], Steps],
        *,
        start: float | None = None,
        wait: bool = True,
    ) -> Steps:
        """One call from the client: up the link, the handler on the node, the ack back.

        The call leaves at `start` (default now). Returns (ok, value or error code,
        ack time); a call that gets no ack in time returns (False, None, the moment
        the client gives up). With `wait` false the process does not wait for the
        ack's arrival (the caller only records it): one event less per send."""
        env = self.env
        m = self.m
        conn = user.conn
        t0 = env.now if start is None else start
        deadline = t0 + self.p.call_timeout
        if conn is None or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        node = conn.node
        yield env.timeout(t0 + m.d_client() - env.now)
        if not node.alive or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        try:
            yield from m.cpu(node, m.d_request())
            value = yield from handler(node)
            ok = True
        except Unavailable:
            ok, value = False, "unavailable"
        except ProtocolRefusal as exc:
            ok, value = False, exc.code
        except Refused:
            return (yield from self._no_ack(deadline, wait))
        if not node.alive or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        back = env.now + m.d_client()
        if back < user.down_last:
            back = user.down_last
        user.down_last = back
        if back > deadline or back >= conn.closes_at:
            return (yield from self._no_ack(deadline, wait))
        if user.loadgen is not None:
            yield env.timeout(back - env.now)
            back = user.loadgen.serve(back, m.d_loadgen())
        if wait and back > env.now:
            yield env.timeout(back - env.now)
        return ok, value, back

    def _no_ack(self, deadline: float, wait: bool) -> Steps:
        if wait and deadline > self.env.now:
            yield self.env.timeout(deadline - self.env.now)
        return False, None, deadline

    def send(self, user: User, intended: float) -> Steps:
        """Send the slot due at `intended` to the user's conversation and record the ack."""
        env = self.env
        m = self.m
        at = max(env.now, intended) + m.d_send_lag()
        if user.loadgen is not None:
            yield env.timeout(at - env.now)
            at = user.loadgen.serve(at, m.d_loadgen())
        conv = m.convs[m.sc.send_conv[user.idx]]
        mid = self.ledger.new(user.idx, conv.index, intended, len(conv.members) - 1)
        user.sends += 1
        cmid = f"{user.name}-sim-{user.sends}" if conv.traced else None
        msg = Msg(mid, conv, user.idx, intended, cmid)
        if conv.traced:
            m.traced_msgs[mid] = msg
        self.counts.inc("sends")
        self.counts.at("sends", at)
        node_name = user.conn.node.name if user.conn else None
        if conv.traced and self.history is not None:
            self.history.send(
                at, user.name, conv.cid, cmid or "", intended=intended, node=node_name
            )
        m.in_flight += 1
        ok, value, t = yield from self.request(
            user, partial(m.handle_send, user=user, msg=msg), start=at, wait=False
        )
        m.in_flight -= 1
        user.free_at = t  # the greenlet is blocked in `send` until the ack or the timeout
        if value is None and not ok:
            self.counts.inc("never_acked")
            return
        self.counts.ack_latency.add(max(t - intended, 1e-9))
        if ok:
            self.ledger.status[mid] = OK
            self.counts.inc("acked_ok")
            self.counts.at("acked_ok", t)
        else:
            self.ledger.status[mid] = ERROR
            self.counts.inc("acked_error")
            self.counts.at("acked_error", t)
            self.counts.errors[value] = self.counts.errors.get(value, 0) + 1
        if conv.traced and self.history is not None:
            self.history.ack(
                t,
                user.name,
                conv.cid,
                cmid or "",
                ok=ok,
                err=None if ok else str(value),
                seq=value if ok else None,
                node=node_name,
            )

    # ------------------------------------------------------------ the inbox

    def arrive(self, conn: Conn, msg: Msg) -> None:
        """A push reaches the client's socket (and its load generator, if modelled)."""
        user = conn.user
        if conn.silent or self.env.now >= conn.closes_at or conn is not user.conn:
            self.counts.inc("pushes_into_dead_connections")
            return
        t = self.env.now
        if user.loadgen is not None:
            t = user.loadgen.serve(t, self.m.d_loadgen())
        self.receive(user, msg.mid, msg.seq, msg.conv, t, "push")

    def receive(
        self, user: User, mid: int, seq: int | None, conv: Conv, t: float, via: str
    ) -> None:
        """`imlab.client.Inbox.accept`: hand over in seq order, buffer ahead of a gap."""
        if seq is None:
            self.hand_over(user, mid, None, conv, t, via)
            return
        ci = conv.index
        cur = user.max_seq.get(ci, 0)
        if seq <= cur:
            self.counts.inc("inbox_duplicates")
            return
        waiting = user.pending.get(ci)
        if seq != cur + 1:
            if waiting is None:
                waiting = user.pending[ci] = {}
            waiting.setdefault(seq, (mid, via))
            if via == "push" and not user.repairing:
                user.repairing = True
                delay = self.p.gap_sync_delay + 0.25 * self.m.rng.random()
                ev = self.env.timeout(max(0.0, t - self.env.now) + delay)
                ev.callbacks.append(lambda _e: self.m.load.post(user, "repair", self.env.now))
            return
        self.hand_over(user, mid, seq, conv, t, via)
        nxt = seq + 1
        if waiting:
            while nxt in waiting:
                held, path = waiting.pop(nxt)  # a push held behind the gap stays a push
                self.hand_over(user, held, nxt, conv, t, path)
                nxt += 1
            if not waiting:
                del user.pending[ci]
        user.max_seq[ci] = nxt - 1

    def hand_over(
        self, user: User, mid: int, seq: int | None, conv: Conv, t: float, via: str
    ) -> None:
        """A message handed to the application: a `recv` record and the counts."""
        led = self.ledger
        sender = led.sender[mid]
        if sender == user.idx:
            self.counts.inc("self_receipts")
        else:
            # The inbox hands each seq over once, and v1 pushes each message once: every
            # delivery here is a first receipt.
            led.got[mid] += 1
            latency = t - led.intended[mid]
            if via == "push":
                self.counts.inc("deliveries_push")
                self.counts.at("deliveries_push", t)
                self.counts.push_latency.add(latency if latency > 0 else 1e-9)
            else:
                self.counts.inc("deliveries_sync")
                self.counts.at("deliveries_sync", t)
                self.counts.sync_latency.add(latency if latency > 0 else 1e-9)
        if conv.traced and self.history is not None:
            m = self.m.traced_msgs.get(mid)
            cmid = m.cmid if m is not None else self._cmid(sender, mid)
            self.history.recv(
                t,
                user.name,
                conv.cid,
                cmid or "",
                sender=self.m.users[sender].name,
                via=via,
                seq=seq,
                node=user.conn.node.name if user.conn else None,
            )

    def _cmid(self, sender: int, mid: int) -> str:
        return f"{self.m.users[sender].name}-sim-{mid}"

    # ------------------------------------------------------------ connections

    def connect(self, user: User, *, record: bool = True) -> Steps:
        """Connect to the first live node in the user's order, log in, say hello; then
        catch up. Returns True when connected."""
        env = self.env
        m = self.m
        for k in user.endpoints:
            node = m.nodes[k]
            yield env.timeout(m.d_client())
            if not node.alive:
                yield env.timeout(m.d_client())  # connection refused
                continue
            conn = Conn(user, node)
            try:
                yield from m.cpu(node, m.d_connect() + m.connect_cost())
            except Refused:
                continue
            node.local[user.idx] = conn
            user.conn = conn
            try:
                yield from m.login(node, user)
            except Unavailable:  # the session stays; the route was not recorded
                self.counts.inc("route_errors")
            yield env.timeout(m.d_client())
            if not node.alive:
                continue
            user.online = True
            self.counts.inc("connects")
            if record and user.traced and self.history is not None:
                self.history.connect(env.now, user.name, node=node.name)
            yield from self.catch_up(user)
            return True
        self.counts.inc("connect_failed")
        return False

    def close(self, user: User, *, tell_server: bool, record: bool = True) -> None:
        """The client closes its connection now; the server learns it one link later."""
        conn = user.conn
        user.online = False
        if conn is None:
            return
        conn.closes_at = min(conn.closes_at, self.env.now)
        if record and user.traced and self.history is not None:
            self.history.disconnect(self.env.now, user.name, node=conn.node.name)
        if tell_server:
            self.env.process(self.m.disconnected(conn))

    def reconnect(self, user: User) -> Steps:
        """After its node died: try again, with backoff, until connected."""
        delay = self.p.reconnect_min
        while True:
            yield self.env.timeout(delay)
            if user.online:
                return
            ok = yield from self.connect(user)
            if ok:
                return
            delay = min(delay * 2, self.p.reconnect_max)

    def catch_up(self, user: User, only: list[int] | None = None) -> Steps:
        """The seed's rule (`ClientCore.catch_up`): `latest`, then sync each
        conversation whose max seq is behind; `only` repairs gaps without `latest`."""
        if FEATURE_HISTORY not in self.m.features:
            return
        if only is None:
            ok, value, _t = yield from self.request(
                user, lambda node: self.m.handle_latest(node, user)
            )
            if not ok or value is None:
                return
            targets: list[tuple[int, int]] = value
        else:
            targets = [(ci, -1) for ci in only]
        for ci, latest in targets:
            conv = self.m.convs[ci]
            while True:
                after = user.max_seq.get(ci, 0)
                if 0 <= latest <= after:
                    break
                handler = partial(self.m.handle_sync, user=user, conv=conv, after=after)
                ok, page, t = yield from self.request(user, handler)
                if not ok or page is None:
                    break
                mids, first_seq, latest_seq, has_more = page
                for i, mid in enumerate(mids):
                    self.receive(user, mid, first_seq + i, conv, t, "sync")
                self.counts.inc("syncs")
                if conv.traced and self.history is not None:
                    self.history.sync(
                        t,
                        user.name,
                        conv.cid,
                        after_seq=after,
                        latest_seq=latest_seq,
                        n=len(mids),
                        node=user.conn.node.name if user.conn else None,
                    )
                latest = latest_seq
                if not mids or not has_more:
                    break
