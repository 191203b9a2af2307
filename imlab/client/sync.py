"""The synchronous client (python-socketio's Client), on threads or on greenlets under
Locust/gevent: the asyncio client's surface, carrying out the same core's steps."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import socketio

from imlab import protocol as p
from imlab.client.core import (
    CONNECTION_LOST,
    SYNC_PAGE,
    Answer,
    ClientError,
    ConnectRefused,
    Dial,
    R,
    Request,
    SendReceipt,
    Steps,
    checked_ack,
)
from imlab.client.transport import (
    CALL_TIMEOUT,
    RECONNECT_RETRY,
    Done,
    Transport,
    log,
    reconnect_delays,
)


class SyncChatClient(Transport):
    """The same client on `socketio.Client` (threads, or greenlets under Locust/gevent).

    Like the asyncio client it reconnects by itself, home endpoint first and then
    the others, so users of a crashed server come back on a live one; after every
    (re)connect it catches up with `latest`/`sync`. A gap is repaired when the
    caller asks (`repair_gaps`), as a load user does on its own schedule.
    """

    def __init__(
        self, user: str, urls: str | Sequence[str], *, reconnect: bool = True, **kw: Any
    ) -> None:
        super().__init__(user, urls, reconnect=reconnect, **kw)
        self.sio = socketio.Client(reconnection=False, logger=False, engineio_logger=False)
        self._reconnecting = False
        self._pending: set[threading.Event] = set()
        self._receipts_out: dict[int, SendReceipt] = {}  # emitted, ack not yet in
        self._receipt_ids = itertools.count()
        # A catch-up and the pushes arriving meanwhile take turns at the core's inbox.
        self._lock = threading.RLock()
        self._listen(self.sio)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on(p.MESSAGE, self._on_message)

    # --- connection

    def connect(self, timeout: float = 10.0) -> None:
        """Connect to the first endpoint that accepts, then catch up."""
        self._run(self.core.connect(timeout))
        self.catch_up()

    def _on_disconnect(self, *reason: Any) -> None:
        for answered in list(self._pending):
            answered.set()  # with no ack in its box: CONNECTION_LOST
        with self._lock:
            lost, self._receipts_out = self._receipts_out, {}
            for receipt in lost.values():
                self.core.receipt_done(receipt.conv, receipt.seq, None)
        if self._lost(reason).will_reconnect and not self._reconnecting:
            self._reconnecting = True
            self.sio.start_background_task(self._reconnect_loop)

    def _reconnect_loop(self) -> None:
        try:
            for delay in reconnect_delays():
                self.sio.sleep(delay)
                if self._closing or self.sio.connected:  # closed, or connected meanwhile
                    return
                try:
                    self.connect(timeout=5)
                    return
                except ConnectRefused:
                    return  # the stage refuses this user: retrying will not change that
                except RECONNECT_RETRY as exc:
                    log.debug("%s: reconnect failed: %s", self.user, exc)
        finally:
            self._reconnecting = False

    def disconnect(self, *, reconnect: bool = False) -> None:
        """Drop the connection but keep the client's state: with `reconnect` it comes
        back by itself, else it stays offline until `connect()` (churn, tests)."""
        self._suppress_reconnect = not reconnect and self.sio.connected
        self.sio.disconnect()

    def close(self) -> None:
        self._closing = True
        self.sio.disconnect()
        self._flush()

    # --- requests

    def call(self, event: str, data: Any = None, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Emit and wait for the ack; a dropped connection fails the call at once."""
        answered = threading.Event()
        box: list[Any] = []

        def on_ack(*args: Any) -> None:
            box.append(args[0] if len(args) == 1 else args)
            answered.set()

        self._pending.add(answered)
        try:
            self.sio.emit(event, data, callback=on_ack)
            if not answered.wait(timeout):
                raise ClientError(f"{event}: no ack within {timeout:g}s")
        except socketio.exceptions.BadNamespaceError:
            raise ClientError(f"{event}: not connected") from None
        finally:
            self._pending.discard(answered)
        return checked_ack(event, box[0] if box else CONNECTION_LOST)

    def _run(self, steps: Steps[R]) -> R:
        need = self._next(steps, None)
        while not isinstance(need, Done):
            answer = self._dial(need) if isinstance(need, Dial) else self._ask(need)
            need = self._next(steps, answer)
        return need.value

    def _dial(self, dial: Dial) -> Answer:
        try:
            self.sio.connect(
                dial.url, auth=dial.auth, transports=["websocket"], wait_timeout=dial.timeout
            )
        except socketio.exceptions.ConnectionError as exc:
            return Answer({}, time.time(), str(exc))
        return Answer({}, time.time())

    def _ask(self, request: Request) -> Answer:
        return Answer(self.call(request.event, request.data), time.time())

    def catch_up(self) -> None:
        with self._lock:
            self._run(self.core.catch_up())

    def repair_gaps(self) -> None:
        """Sync the conversations with a gap (a push held ahead of a missing seq)."""
        with self._lock:
            gaps = self.core.inbox.gaps()
            if gaps:
                self._run(self.core.catch_up(only=gaps))

    def hello(self) -> dict[str, Any]:
        return self._run(self.core.hello())

    def send(
        self,
        *,
        to: str | None = None,
        group: str | None = None,
        body: str = "",
        client_msg_id: str | None = None,
        intended: float | None = None,
    ) -> dict[str, Any]:
        return self._run(
            self.core.send(
                to=to,
                group=group,
                body=body,
                client_msg_id=client_msg_id,
                intended=intended,
                now=time.time(),
            )
        )

    def create_group(self, members: Sequence[str], name: str = "") -> dict[str, Any]:
        return self._run(self.core.create_group(members, name))

    def refresh(self) -> dict[str, Any]:
        """A new token for later (re)connects (feature "authz"); returns the ack."""
        return self._run(self.core.refresh())

    def group_add(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        return self._run(self.core.group_add(group, members))

    def group_remove(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        return self._run(self.core.group_remove(group, members))

    def group_leave(self, group: str) -> dict[str, Any]:
        return self._run(self.core.group_leave(group))

    def latest(self) -> dict[str, Any]:
        return self._run(self.core.latest())

    def sync(self, conv: str, after_seq: int = 0, limit: int = SYNC_PAGE) -> dict[str, Any]:
        return self._run(self.core.sync(conv, after_seq, limit))

    # --- receipts: emitted with a callback, never waited for (a load user keeps going)

    def _send_receipt(self, receipt: SendReceipt) -> None:
        rid = next(self._receipt_ids)

        def on_ack(*args: Any) -> None:
            following = None
            with self._lock:
                if self._receipts_out.pop(rid, None) is not None:
                    ack = args[0] if args else None
                    following = self.core.receipt_done(receipt.conv, receipt.seq, ack)
            if following is not None:
                self._send_receipt(following)

        request = receipt.request
        with self._lock:
            self._receipts_out[rid] = receipt
            try:
                self.sio.emit(request.event, request.data, callback=on_ack)
            except (socketio.exceptions.SocketIOError, OSError) as exc:
                log.debug("%s: receipt %s not sent: %s", self.user, request.data, exc)
                self._receipts_out.pop(rid, None)
                self.core.receipt_done(receipt.conv, receipt.seq, None)

    # --- inbound

    def _on_message(self, data: Any) -> None:
        with self._lock:
            self._receive(data)

    # --- test helpers

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}: timed out after {timeout}s waiting for {what}")
            self.sio.sleep(0.02)
