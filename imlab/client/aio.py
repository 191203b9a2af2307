"""The asyncio client (python-socketio's AsyncClient), for tests, tools and the terminal
chat: it carries out the core's steps and reconnects by itself unless closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
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


class AsyncChatClient(Transport):
    """An asyncio client; reconnects by itself (to the next endpoint) unless closed.

    A push that arrives ahead of a gap is held; `gap_sync_delay` seconds later the
    gap is repaired with `sync` (never, when negative).

    With `refresh_before` (seconds) and a token, on a stage of feature "authz" the
    client refreshes its token that long before it expires (again after a failure,
    every `REFRESH_RETRY` seconds while the token lives; `refresh_failures` counts).
    """

    REFRESH_RETRY = 2.0

    def __init__(
        self,
        user: str,
        urls: str | Sequence[str],
        *,
        reconnect: bool = True,
        gap_sync_delay: float = 0.5,
        refresh_before: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(user, urls, reconnect=reconnect, **kw)
        self.gap_sync_delay = gap_sync_delay
        self.refresh_before = refresh_before
        self.refresh_failures = 0
        self._refresher: asyncio.Task[None] | None = None
        self.sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self.connected = asyncio.Event()
        self._listen(self.sio)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on(p.MESSAGE, self._on_message)

    # --- connection

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect to the first endpoint that accepts, then catch up."""
        await self._run(self.core.connect(timeout))
        self.connected.set()
        self._start_refresher()
        await self.catch_up()

    async def _on_disconnect(self, *reason: Any) -> None:
        self.connected.clear()
        for answer in list(self._pending):
            if not answer.done():
                answer.set_result(CONNECTION_LOST)
        if self._lost(reason).will_reconnect:
            self._spawn(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        for delay in reconnect_delays():
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self.connect(timeout=5)
                return
            except ConnectRefused:
                raise
            except RECONNECT_RETRY as exc:
                log.debug("%s: reconnect failed: %s", self.user, exc)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await self.sio.disconnect()
        self._flush()

    async def disconnect(self, *, reconnect: bool = False) -> None:
        """Drop the connection but keep the client's state: with `reconnect` it comes
        back by itself, else it stays offline until `connect()` (churn, tests)."""
        self._suppress_reconnect = not reconnect and self.sio.connected
        await self.sio.disconnect()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- requests

    async def call(
        self, event: str, data: Any = None, timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        """Emit and wait for the ack; a dropped connection fails the call at once."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if len(args) == 1 else args)

        self._pending.add(answer)
        try:
            await self.sio.emit(event, data, callback=on_ack)
            ack = await asyncio.wait_for(answer, timeout)
        except socketio.exceptions.BadNamespaceError:
            raise ClientError(f"{event}: not connected") from None
        except TimeoutError:
            raise ClientError(f"{event}: no ack within {timeout:g}s") from None
        finally:
            self._pending.discard(answer)
        return checked_ack(event, ack)

    async def _run(self, steps: Steps[R]) -> R:
        need = self._next(steps, None)
        while not isinstance(need, Done):
            answer = await (self._dial(need) if isinstance(need, Dial) else self._ask(need))
            need = self._next(steps, answer)
        return need.value

    async def _dial(self, dial: Dial) -> Answer:
        try:
            await self.sio.connect(
                dial.url, auth=dial.auth, transports=["websocket"], wait_timeout=dial.timeout
            )
        except socketio.exceptions.ConnectionError as exc:
            return Answer({}, time.time(), str(exc))
        return Answer({}, time.time())

    async def _ask(self, request: Request) -> Answer:
        return Answer(await self.call(request.event, request.data), time.time())

    async def catch_up(self) -> None:
        await self._run(self.core.catch_up())

    async def repair_gaps(self) -> None:
        """Sync the conversations with a gap (a push held ahead of a missing seq)."""
        gaps = self.core.inbox.gaps()
        if gaps:
            await self._run(self.core.catch_up(only=gaps))

    async def hello(self) -> dict[str, Any]:
        return await self._run(self.core.hello())

    async def send(
        self,
        *,
        to: str | None = None,
        group: str | None = None,
        body: str = "",
        client_msg_id: str | None = None,
        intended: float | None = None,
    ) -> dict[str, Any]:
        return await self._run(
            self.core.send(
                to=to,
                group=group,
                body=body,
                client_msg_id=client_msg_id,
                intended=intended,
                now=time.time(),
            )
        )

    async def create_group(self, members: Sequence[str], name: str = "") -> dict[str, Any]:
        return await self._run(self.core.create_group(members, name))

    async def refresh(self) -> dict[str, Any]:
        """A new token for later (re)connects (feature "authz"); returns the ack."""
        return await self._run(self.core.refresh())

    async def group_add(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        return await self._run(self.core.group_add(group, members))

    async def group_remove(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        return await self._run(self.core.group_remove(group, members))

    async def group_leave(self, group: str) -> dict[str, Any]:
        return await self._run(self.core.group_leave(group))

    async def latest(self) -> dict[str, Any]:
        return await self._run(self.core.latest())

    async def sync(self, conv: str, after_seq: int = 0, limit: int = SYNC_PAGE) -> dict[str, Any]:
        return await self._run(self.core.sync(conv, after_seq, limit))

    # --- receipts and refresh, in the background

    def _send_receipt(self, receipt: SendReceipt) -> None:
        self._spawn(self._receipt(receipt))

    async def _receipt(self, receipt: SendReceipt) -> None:
        request = receipt.request
        try:
            ack: Any = await self.call(request.event, request.data)
        except ClientError as exc:
            log.debug("%s: receipt %s failed: %s", self.user, request.data, exc)
            ack = None
        following = self.core.receipt_done(receipt.conv, receipt.seq, ack)
        if following is not None and self.connected.is_set():
            self._send_receipt(following)

    def _start_refresher(self) -> None:
        if self.refresh_before is None or self.core.token is None:
            return
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh_loop())
            self._tasks.add(self._refresher)
            self._refresher.add_done_callback(self._tasks.discard)

    async def _refresh_loop(self) -> None:
        assert self.refresh_before is not None
        while not self._closing and p.FEATURE_AUTHZ in self.features:
            expires = self.core.token_expires_at
            if expires is None:
                return
            now = time.time()
            if now >= expires:
                return  # too late: the next connect is refused and says so
            due = expires - self.refresh_before
            if now < due:
                await asyncio.sleep(due - now)  # then look again: a manual refresh moves it
                continue
            await self.connected.wait()
            try:
                ack = await self.refresh()
            except ClientError as exc:
                log.debug("%s: token refresh failed: %s", self.user, exc)
                ack = {}
            if not ack.get("ok"):
                self.refresh_failures += 1
            later = self.core.token_expires_at
            if not ack.get("ok") or later is None or later - self.refresh_before <= time.time():
                await asyncio.sleep(self.REFRESH_RETRY)  # no busy loop on a short new life

    # --- inbound

    async def _on_message(self, data: Any) -> None:
        self._receive(data)
        if self.core.inbox.pending and self.gap_sync_delay >= 0:
            self._spawn(self._repair_gaps_later())

    async def _repair_gaps_later(self) -> None:
        await asyncio.sleep(self.gap_sync_delay)
        if self.connected.is_set():
            try:
                await self.repair_gaps()
            except ClientError as exc:
                log.debug("%s: gap repair failed: %s", self.user, exc)

    # --- test helpers

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}: timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)
