"""The client SDK: an asyncio client for tests, tools and the terminal chat, and a
synchronous client with the same surface for Locust (gevent).

Both share one sans-I/O core (`ClientCore`): it keeps the max seq per
conversation, hands messages to the application in seq order (buffering a push
that arrives ahead of a gap), and runs the seed's catch-up rule on every
(re)connect: ask `latest` for y, and when the local max seq x < y, `sync` after x.
The two transports only move requests and acks. Every send, ack, receipt,
connect, disconnect and sync can be recorded as a history (docs/PROTOCOL.md section 5).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import socketio

from imlab import protocol as p
from imlab.protocol import Message

log = logging.getLogger("imlab.client")

Request = tuple[str, dict[str, Any]]
Steps = Generator[Request, dict[str, Any], None]

SYNC_PAGE = 200
CALL_TIMEOUT = 10.0


class ClientError(Exception):
    """A request got no ack (timeout or connection gone)."""


class ConnectRefused(ClientError):
    """The server refused the connect; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"connect refused: {code}: {message}")
        self.code = code
        self.message = message


class NoServerReachable(ClientError):
    """None of the endpoints accepted a connection."""


# ---------------------------------------------------------------- history


class HistoryRecorder:
    """Appends history events as JSON lines; safe to share between threads/greenlets."""

    def __init__(self, path: Path | str, **common: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", buffering=1 << 16)  # noqa: SIM115
        self._lock = threading.Lock()
        self._common = common

    def record(self, ev: str, **fields: Any) -> None:
        event = {"t": time.time(), "ev": ev, **self._common, **fields}
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


# ---------------------------------------------------------------- ordering


class Inbox:
    """Per-conversation delivery in seq order; pure logic, no I/O.

    A message with the next seq is delivered at once (with any buffered
    successors); one ahead of a gap waits until the gap is filled (by push or
    sync); one at or below the max seq is a duplicate and dropped. Messages
    without a seq (stage v1) are delivered as they come. Each delivered message
    keeps the path it came by: a push held behind a gap is still a push.
    """

    def __init__(self) -> None:
        self.max_seq: dict[str, int] = {}
        self.pending: dict[str, dict[int, tuple[Message, str]]] = {}
        self.duplicates = 0

    def accept(self, msg: Message, via: str = "push") -> list[tuple[Message, str]]:
        if msg.seq is None:
            return [(msg, via)]
        conv = msg.conv
        cur = self.max_seq.get(conv, 0)
        if msg.seq <= cur:
            self.duplicates += 1
            return []
        waiting = self.pending.setdefault(conv, {})
        if msg.seq != cur + 1:
            waiting.setdefault(msg.seq, (msg, via))
            return []
        out = [(msg, via)]
        nxt = msg.seq + 1
        while nxt in waiting:
            out.append(waiting.pop(nxt))
            nxt += 1
        self.max_seq[conv] = nxt - 1
        if not waiting:
            del self.pending[conv]
        return out

    def gaps(self) -> dict[str, int]:
        """Conversations with a gap, and the seq to sync after."""
        return {conv: self.max_seq.get(conv, 0) for conv in self.pending}


# ---------------------------------------------------------------- shared core

MessageCallback = Callable[[Message, str], None]
GroupCallback = Callable[[dict[str, Any]], None]
# (url, node, is a reconnect): called once connected and introduced, before the catch-up.
ConnectCallback = Callable[[str, str | None, bool], None]
# (reason, will reconnect by itself)
DisconnectCallback = Callable[[str | None, bool], None]
# (conv, messages recovered by sync, the local max seq the sync started after)
CatchUpCallback = Callable[[str, int, int], None]


def ordered_endpoints(urls: Sequence[str], user: str) -> list[str]:
    """The endpoints in the order this user tries them: its home node (hash of the id) first."""
    if not urls:
        raise ValueError("no server endpoints given")
    start = zlib.crc32(user.encode()) % len(urls)
    return [urls[(start + i) % len(urls)] for i in range(len(urls))]


CONNECTION_LOST = object()  # what a pending call gets when its connection drops
# A reconnect attempt that failed with one of these is tried again after the next delay.
RECONNECT_RETRY = (ClientError, socketio.exceptions.ConnectionError, OSError)


def reconnect_delays() -> Iterator[float]:
    """The waits before each reconnect attempt: 50 ms, doubling, at most 1 s."""
    delay = 0.05
    while True:
        yield delay
        delay = min(delay * 2, 1.0)


def checked_ack(event: str, ack: Any) -> dict[str, Any]:
    """The ack of a call, or a ClientError saying why there is none."""
    if ack is CONNECTION_LOST:
        raise ClientError(f"{event}: connection lost before the ack")
    if not isinstance(ack, dict):
        raise ClientError(f"{event}: malformed ack {ack!r}")
    return ack


class ClientCore:
    """Everything a client knows and decides, independent of the transport."""

    def __init__(
        self,
        user: str,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        recorder: HistoryRecorder | None = None,
        on_message: MessageCallback | None = None,
        on_group: GroupCallback | None = None,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        on_catch_up: CatchUpCallback | None = None,
    ) -> None:
        self.user = user
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.endpoints = ordered_endpoints(self.urls, user)
        self.token = token
        self.recorder = recorder
        self.on_message = on_message
        self.on_group = on_group
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_catch_up = on_catch_up
        self.connects = 0
        self.inbox = Inbox()
        self.received: dict[str, list[Message]] = {}
        self.received_via: dict[str, int] = {"push": 0, "sync": 0}
        self.groups: dict[str, list[str]] = {}
        self.stage: str | None = None
        self.node: str | None = None
        self.features: set[str] = set()
        self.url: str | None = None
        self.refusal: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"{user}-{uuid.uuid4().hex[:8]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"token": self.token} if self.token is not None else {"user": self.user}

    def record(self, ev: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(ev, user=self.user, node=self.node, **fields)

    def next_client_msg_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    # --- inbound

    def handle_message(self, data: Any, via: str) -> list[Message]:
        try:
            msg = Message.from_dict(data)
        except (KeyError, TypeError, ValueError):
            log.warning("%s: ignoring malformed message %r", self.user, data)
            return []
        delivered = self.inbox.accept(msg, via)
        for m, path in delivered:
            self.received.setdefault(m.conv, []).append(m)
            self.received_via[path] += 1
            self.record(
                "recv", conv=m.conv, msg=m.client_msg_id, seq=m.seq, sender=m.sender, via=path
            )
            if self.on_message is not None:
                self.on_message(m, path)
        return [m for m, _path in delivered]

    def handle_group_created(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("group_id"), str):
            self.groups[data["group_id"]] = list(data.get("members") or [])
            if self.on_group is not None:
                self.on_group(data)

    def handle_group_ack(self, ack: dict[str, Any], members: Sequence[str]) -> None:
        if ack.get("ok"):
            self.groups[ack["group_id"]] = list(ack.get("members") or members)
            self.record("group", conv=ack.get("conv"), members=self.groups[ack["group_id"]])

    def connect_failed(self, url: str, exc: Exception, errors: list[str]) -> None:
        """A refused connect ends the attempt (wrong identity stays wrong on every node);
        an unreachable node is noted and the next one is tried."""
        if self.refusal is not None:
            r = self.refusal
            raise ConnectRefused(str(r.get("code", "refused")), str(r.get("message", "")))
        errors.append(f"{url}: {exc}")

    def handle_connect_error(self, data: Any) -> None:
        # A server's refusal arrives as a dict ({"message", "data"}); python-socketio
        # also fires connect_error with a plain string when the node is unreachable,
        # and that must not count as a refusal (the next endpoint is tried instead).
        if isinstance(data, dict):
            self.refusal = p.parse_refusal(data)

    # --- requests, as (event, payload) steps the transport runs

    def send_payload(
        self,
        to: str | None,
        group: str | None,
        body: str,
        client_msg_id: str | None,
        intended: float | None,
    ) -> dict[str, Any]:
        now = time.time()
        cmid = client_msg_id or self.next_client_msg_id()
        conv = p.group_conv(group) if group is not None else p.dm_conv(self.user, to or "")
        payload: dict[str, Any] = {"client_msg_id": cmid, "body": body, "sent_at": now}
        if group is not None:
            payload["group"] = group
        else:
            payload["to"] = to
        self.record("send", conv=conv, msg=cmid, intended=now if intended is None else intended)
        return payload

    def record_ack(self, payload: dict[str, Any], ack: dict[str, Any]) -> None:
        group = payload.get("group")
        conv = p.group_conv(group) if group else p.dm_conv(self.user, payload.get("to") or "")
        err = None if ack.get("ok") else (ack.get("error") or {}).get("code", "unknown")
        self.record(
            "ack",
            conv=conv,
            msg=payload["client_msg_id"],
            ok=bool(ack.get("ok")),
            err=err,
            seq=ack.get("seq"),
        )

    def handle_hello(self, ack: dict[str, Any]) -> None:
        if ack.get("ok"):
            self.stage = ack.get("stage")
            self.node = ack.get("node")
            self.features = set(ack.get("features") or [])
            if self.token is not None and isinstance(ack.get("user"), str):
                self.user = ack["user"]  # with a token, the server says who we are

    def note_connected(self) -> None:
        """Record the connect and tell the application (after `hello`, before catch-up)."""
        self.record("connect", url=self.url)
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect(self.url or "", self.node, self.connects > 1)

    def note_disconnected(self, reason: str | None, will_reconnect: bool) -> None:
        self.record("disconnect", reason=reason)
        if self.on_disconnect is not None:
            self.on_disconnect(reason, will_reconnect)

    def catch_up_steps(self, only: dict[str, int] | None = None) -> Steps:
        """The seed's rule: ask `latest` (y); for each conversation with x < y, sync after x.

        `only` limits the catch-up to given conversations (gap repair) without `latest`.
        """
        if p.FEATURE_HISTORY not in self.features:
            return
        if only is None:
            ack = yield (p.LATEST, {})
            if not ack.get("ok"):
                return
            targets = {c: int(y) for c, y in (ack.get("seqs") or {}).items()}
        else:
            targets = {c: -1 for c in only}
        for conv, latest in targets.items():
            start = self.inbox.max_seq.get(conv, 0)
            recovered = 0
            while True:
                after = self.inbox.max_seq.get(conv, 0)
                if 0 <= latest <= after:
                    break
                ack = yield (p.SYNC, {"conv": conv, "after_seq": after, "limit": SYNC_PAGE})
                if not ack.get("ok"):
                    break
                messages = ack.get("messages") or []
                for m in messages:
                    recovered += len(self.handle_message(m, "sync"))
                self.record(
                    "sync",
                    conv=conv,
                    after_seq=after,
                    n=len(messages),
                    latest_seq=ack.get("latest_seq"),
                )
                latest = int(ack.get("latest_seq") or 0)
                if not messages or not ack.get("has_more"):
                    break
            if self.on_catch_up is not None:
                self.on_catch_up(conv, recovered, start)


# ---------------------------------------------------------------- asyncio client


class AsyncChatClient(ClientCore):
    """An asyncio client; reconnects by itself (to the next endpoint) unless closed."""

    def __init__(
        self,
        user: str,
        urls: str | Sequence[str],
        *,
        reconnect: bool = True,
        gap_sync_delay: float = 0.5,
        **kw: Any,
    ) -> None:
        super().__init__(user, urls, **kw)
        self.reconnect = reconnect
        self.gap_sync_delay = gap_sync_delay
        self.sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        self._closing = False
        self._suppress_reconnect = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self.connected = asyncio.Event()
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self.handle_connect_error)
        self.sio.on(p.MESSAGE, self._on_message)
        self.sio.on(p.GROUP_CREATED, self.handle_group_created)

    # --- connection

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect to the first endpoint that accepts, then catch up."""
        errors: list[str] = []
        for url in self.endpoints:
            self.refusal = None
            try:
                await self.sio.connect(
                    url, auth=self.auth, transports=["websocket"], wait_timeout=timeout
                )
            except socketio.exceptions.ConnectionError as exc:
                self.connect_failed(url, exc, errors)
                continue
            self.url = url
            await self._after_connect()
            return
        raise NoServerReachable(f"{self.user}: no endpoint accepted: {'; '.join(errors)}")

    async def _after_connect(self) -> None:
        self.handle_hello(await self.call(p.HELLO, {}))
        self.note_connected()
        self.connected.set()
        await self.catch_up()

    async def _on_connect(self) -> None:
        pass

    async def _on_disconnect(self, *reason: Any) -> None:
        self.connected.clear()
        for answer in list(self._pending):
            if not answer.done():
                answer.set_result(CONNECTION_LOST)
        suppressed, self._suppress_reconnect = self._suppress_reconnect, False
        again = not self._closing and self.reconnect and not suppressed
        self.note_disconnected(str(reason[0]) if reason else None, again)
        if again:
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
        if self.recorder is not None:
            self.recorder.flush()

    async def disconnect(self, *, reconnect: bool = False) -> None:
        """Drop the connection but keep the client's state: with `reconnect` it comes
        back by itself, else it stays offline until `connect()` (churn, tests)."""
        self._suppress_reconnect = not reconnect and self.sio.connected
        await self.sio.disconnect()

    def _spawn(self, coro: Any) -> None:
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

    async def _run(self, steps: Steps) -> None:
        try:
            req = next(steps)
            while True:
                req = steps.send(await self.call(*req))
        except StopIteration:
            pass

    async def catch_up(self) -> None:
        await self._run(self.catch_up_steps())

    async def hello(self) -> dict[str, Any]:
        ack = await self.call(p.HELLO, {})
        self.handle_hello(ack)
        return ack

    async def send(
        self,
        *,
        to: str | None = None,
        group: str | None = None,
        body: str = "",
        client_msg_id: str | None = None,
        intended: float | None = None,
    ) -> dict[str, Any]:
        payload = self.send_payload(to, group, body, client_msg_id, intended)
        ack = await self.call(p.SEND, payload)
        self.record_ack(payload, ack)
        return ack

    async def create_group(self, members: Sequence[str], name: str = "") -> dict[str, Any]:
        ack = await self.call(p.CREATE_GROUP, {"members": list(members), "name": name})
        self.handle_group_ack(ack, members)
        return ack

    async def latest(self) -> dict[str, Any]:
        return await self.call(p.LATEST, {})

    async def sync(self, conv: str, after_seq: int = 0, limit: int = SYNC_PAGE) -> dict[str, Any]:
        return await self.call(p.SYNC, {"conv": conv, "after_seq": after_seq, "limit": limit})

    # --- inbound

    async def _on_message(self, data: Any) -> None:
        self.handle_message(data, "push")
        if self.inbox.pending and self.gap_sync_delay >= 0:
            self._spawn(self._repair_gaps())

    async def _repair_gaps(self) -> None:
        await asyncio.sleep(self.gap_sync_delay)
        gaps = self.inbox.gaps()
        if gaps and self.connected.is_set():
            try:
                await self._run(self.catch_up_steps(only=gaps))
            except ClientError as exc:
                log.debug("%s: gap repair failed: %s", self.user, exc)

    # --- test helpers

    def messages(self, conv: str) -> list[Message]:
        return self.received.get(conv, [])

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}: timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- synchronous client


class SyncChatClient(ClientCore):
    """The same client on `socketio.Client` (threads, or greenlets under Locust/gevent).

    Like the asyncio client it reconnects by itself, home endpoint first and then
    the others, so users of a crashed server come back on a live one; after every
    (re)connect it catches up with `latest`/`sync`.
    """

    def __init__(
        self, user: str, urls: str | Sequence[str], *, reconnect: bool = True, **kw: Any
    ) -> None:
        super().__init__(user, urls, **kw)
        self.reconnect = reconnect
        self.sio = socketio.Client(reconnection=False, logger=False, engineio_logger=False)
        self._closing = False
        self._suppress_reconnect = False
        self._reconnecting = False
        self._will_reconnect = False
        self._pending: set[threading.Event] = set()
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self.handle_connect_error)
        self.sio.on(p.MESSAGE, self._on_message)
        self.sio.on(p.GROUP_CREATED, self.handle_group_created)
        self._lock = threading.RLock()

    def connect(self, timeout: float = 10.0) -> None:
        """Connect to the first endpoint that accepts, then catch up."""
        errors: list[str] = []
        for url in self.endpoints:
            self.refusal = None
            try:
                self.sio.connect(
                    url, auth=self.auth, transports=["websocket"], wait_timeout=timeout
                )
            except socketio.exceptions.ConnectionError as exc:
                self.connect_failed(url, exc, errors)
                continue
            self.url = url
            self._after_connect()
            return
        raise NoServerReachable(f"{self.user}: no endpoint accepted: {'; '.join(errors)}")

    def _after_connect(self) -> None:
        self.handle_hello(self.call(p.HELLO, {}))
        self.note_connected()
        self.catch_up()

    def _on_disconnect(self, *reason: Any) -> None:
        for answered in list(self._pending):
            answered.set()  # with no ack in its box: CONNECTION_LOST
        suppressed, self._suppress_reconnect = self._suppress_reconnect, False
        self._will_reconnect = not self._closing and self.reconnect and not suppressed
        self._note_disconnect(str(reason[0]) if reason else None)
        if self._will_reconnect and not self._reconnecting:
            self._reconnecting = True
            self.sio.start_background_task(self._reconnect_loop)

    def _note_disconnect(self, reason: str | None) -> None:
        self.note_disconnected(reason, self._will_reconnect)

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
        if self.recorder is not None:
            self.recorder.flush()

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

    def _run(self, steps: Steps) -> None:
        with self._lock:
            try:
                req = next(steps)
                while True:
                    req = steps.send(self.call(*req))
            except StopIteration:
                pass

    def catch_up(self) -> None:
        self._run(self.catch_up_steps())

    def repair_gaps(self) -> None:
        gaps = self.inbox.gaps()
        if gaps:
            self._run(self.catch_up_steps(only=gaps))

    def send(
        self,
        *,
        to: str | None = None,
        group: str | None = None,
        body: str = "",
        client_msg_id: str | None = None,
        intended: float | None = None,
    ) -> dict[str, Any]:
        payload = self.send_payload(to, group, body, client_msg_id, intended)
        ack = self.call(p.SEND, payload)
        self.record_ack(payload, ack)
        return ack

    def create_group(self, members: Sequence[str], name: str = "") -> dict[str, Any]:
        ack = self.call(p.CREATE_GROUP, {"members": list(members), "name": name})
        self.handle_group_ack(ack, members)
        return ack

    def _on_message(self, data: Any) -> None:
        with self._lock:
            self.handle_message(data, "push")


def default_history_path(run_dir: Path, label: str) -> Path:
    return run_dir / f"history-{label}-{os.getpid()}.jsonl"
