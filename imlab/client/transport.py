"""What the asyncio and the synchronous client share beyond the core they hold: the
application's hooks, the history sink, the core's state to read, and running the
core's steps up to the I/O each transport does its own way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic

import socketio

from imlab import protocol as p
from imlab.client.core import (
    Answer,
    CaughtUp,
    ClientCore,
    ClientError,
    Connected,
    Delivered,
    Dial,
    Disconnected,
    Effect,
    GroupChanged,
    GroupJoined,
    R,
    Record,
    Request,
    SendReceipt,
    Steps,
)
from imlab.client.history import HistorySink
from imlab.client.inbox import Inbox
from imlab.protocol import Message

log = logging.getLogger("imlab.client")

MessageCallback = Callable[[Message, str], None]
GroupCallback = Callable[[dict[str, Any]], None]
# (url, node, is a reconnect): called once connected and introduced, before the catch-up.
ConnectCallback = Callable[[str, str | None, bool], None]
# (reason, will reconnect by itself)
DisconnectCallback = Callable[[str | None, bool], None]
# (conv, messages recovered by sync, the local max seq the sync started after)
CatchUpCallback = Callable[[str, int, int], None]

CALL_TIMEOUT = 10.0
# A reconnect attempt that failed with one of these is tried again after the next delay.
RECONNECT_RETRY = (ClientError, socketio.exceptions.ConnectionError, OSError)


def reconnect_delays() -> Iterator[float]:
    """The waits before each reconnect attempt: 50 ms, doubling, at most 1 s."""
    delay = 0.05
    while True:
        yield delay
        delay = min(delay * 2, 1.0)


@dataclass(frozen=True)
class Done(Generic[R]):
    """The steps have ended with this result."""

    value: R


class Transport:
    """The part of a client that is the same on asyncio and on threads/greenlets.

    Holds a `ClientCore` (`self.core`); its state is readable here (`user`, `node`,
    `received`, ...). Hooks may be given to the constructor or set afterwards.
    """

    def __init__(
        self,
        user: str,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        reconnect: bool = True,
        recorder: HistorySink | None = None,
        on_message: MessageCallback | None = None,
        on_group: GroupCallback | None = None,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        on_catch_up: CatchUpCallback | None = None,
        on_group_change: GroupCallback | None = None,
    ) -> None:
        self.core = ClientCore(user, urls, token=token)
        self.reconnect = reconnect
        self.recorder = recorder
        self.on_message = on_message
        self.on_group = on_group
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_catch_up = on_catch_up
        self.on_group_change = on_group_change
        self._closing = False
        self._suppress_reconnect = False

    # --- the core's state

    @property
    def user(self) -> str:
        return self.core.user

    @property
    def endpoints(self) -> list[str]:
        return self.core.endpoints

    @property
    def url(self) -> str | None:
        return self.core.url

    @property
    def stage(self) -> str | None:
        return self.core.stage

    @property
    def node(self) -> str | None:
        return self.core.node

    @property
    def features(self) -> set[str]:
        return self.core.features

    @property
    def connects(self) -> int:
        return self.core.connects

    @property
    def inbox(self) -> Inbox:
        return self.core.inbox

    @property
    def received(self) -> dict[str, list[Message]]:
        return self.core.received

    @property
    def received_via(self) -> dict[str, int]:
        return self.core.received_via

    @property
    def groups(self) -> dict[str, list[str]]:
        return self.core.groups

    @property
    def token(self) -> str | None:
        """The token the next (re)connect presents (`refresh()` replaces it)."""
        return self.core.token

    @property
    def receipt_failures(self) -> int:
        return self.core.receipt_failures

    def messages(self, conv: str) -> list[Message]:
        return self.core.received.get(conv, [])

    # --- running the core's steps

    def _listen(self, sio: socketio.Client | socketio.AsyncClient) -> None:
        sio.on("connect_error", self.core.handle_connect_error)
        sio.on(p.GROUP_CREATED, self._group_created)
        sio.on(p.GROUP_CHANGED, self._group_changed)
        sio.on(p.ERROR, self._error)

    def _next(self, steps: Steps[R], answer: Answer | None) -> Dial | Request | Done[R]:
        """Applies the steps' effects until they need I/O (returned) or end (`Done`)."""
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as stop:
                return Done(stop.value)
            if isinstance(step, Dial | Request):
                return step
            self._apply(step)
            answer = None

    def _apply(self, effect: Effect) -> None:
        match effect:
            case Record(rec):
                if self.recorder is not None:
                    self.recorder.write(rec)
            case Delivered(message, via):
                if self.on_message is not None:
                    self.on_message(message, via)
            case GroupJoined(data):
                if self.on_group is not None:
                    self.on_group(data)
            case GroupChanged(data):
                if self.on_group_change is not None:
                    self.on_group_change(data)
            case SendReceipt():
                self._send_receipt(effect)
            case Connected(url, node, again):
                if self.on_connect is not None:
                    self.on_connect(url, node, again)
            case Disconnected(reason, again):
                if self.on_disconnect is not None:
                    self.on_disconnect(reason, again)
            case CaughtUp(conv, recovered, after):
                if self.on_catch_up is not None:
                    self.on_catch_up(conv, recovered, after)

    def record(self, ev: str, **fields: Any) -> None:
        """Record a history event of this user now (one the core does not decide itself)."""
        self._apply(self.core.record(ev, time.time(), **fields))

    # --- inbound, the same on both

    def _receive(self, data: Any) -> None:
        malformed = self.core.malformed
        for effect in self.core.receive(data, "push", time.time()):
            self._apply(effect)
        if self.core.malformed > malformed:
            log.warning("%s: ignoring malformed message %r", self.user, data)

    def _group_created(self, data: Any) -> None:
        for effect in self.core.group_created(data):
            self._apply(effect)

    def _group_changed(self, data: Any) -> None:
        for effect in self.core.group_changed(data, time.time()):
            self._apply(effect)

    def _send_receipt(self, receipt: SendReceipt) -> None:
        """Emit the receipt without waiting; report its outcome to the core."""
        raise NotImplementedError

    def _error(self, data: Any) -> None:
        log.info("%s: the server closes the connection: %r", self.user, data)
        self.core.handle_error(data)

    def _lost(self, reason: tuple[Any, ...]) -> Disconnected:
        """The connection dropped: record it, tell the application, and say whether
        to reconnect (not when closing, asked not to, or refused for good)."""
        suppressed, self._suppress_reconnect = self._suppress_reconnect, False
        again = not self._closing and self.reconnect and not suppressed
        why = str(reason[0]) if reason else None
        rec, note = self.core.disconnected(why, reconnect=again, now=time.time())
        self._tell_disconnect(rec, note)
        return note

    def _tell_disconnect(self, rec: Record, note: Disconnected) -> None:
        self._apply(rec)
        self._apply(note)

    def _flush(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()
