"""The client's sans-I/O core: everything a client knows and decides, for any transport.

The core never reads the clock, touches a socket or writes a file. Each operation is a
generator of steps: a `Dial` or a `Request` the transport carries out and answers with
an `Answer` (stamped with the time it arrived), and effects it applies (`Record`, a
history event as data; `Delivered`, `Connected`, ... for the application's hooks).
"""

from __future__ import annotations

import itertools
import uuid
import zlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from imlab import protocol as p
from imlab.auth import unverified_expiry
from imlab.client.inbox import Inbox
from imlab.experiment import history as H
from imlab.protocol import ErrorCode, Message

SYNC_PAGE = 200


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


# ---------------------------------------------------------------- steps


class Dial(NamedTuple):
    """Open a connection to `url`; answer with the failure's text if it fails."""

    url: str
    auth: dict[str, str]
    timeout: float


class Request(NamedTuple):
    """Emit `event` with `data`; answer with its ack."""

    event: str
    data: dict[str, Any]


class Answer(NamedTuple):
    """What came back for a step, and when (epoch seconds)."""

    ack: dict[str, Any]
    now: float
    failure: str | None = None


@dataclass(frozen=True)
class Record:
    """A history event (`imlab.experiment.history.event`) to be written."""

    event: dict[str, Any]


@dataclass(frozen=True)
class Delivered:
    """A message handed to the application, in seq order; `via` is `push` or `sync`."""

    message: Message
    via: str


@dataclass(frozen=True)
class GroupJoined:
    """The server says this user was added to a group."""

    data: dict[str, Any]


@dataclass(frozen=True)
class GroupChanged:
    """The server says a group's members changed (`group_changed`: group, added, removed, by)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class SendReceipt:
    """Emit `receipt` {conv, seq} without waiting for it: the transport reports the ack
    (or its absence) to `ClientCore.receipt_done`."""

    conv: str
    seq: int

    @property
    def request(self) -> Request:
        return Request(p.RECEIPT, {"conv": self.conv, "seq": self.seq})


@dataclass(frozen=True)
class Connected:
    """Connected and introduced (after `hello`, before the catch-up)."""

    url: str
    node: str | None
    again: bool


@dataclass(frozen=True)
class Disconnected:
    """The connection is gone; `will_reconnect` says whether the client comes back by itself."""

    reason: str | None
    will_reconnect: bool


@dataclass(frozen=True)
class CaughtUp:
    """A conversation's catch-up ended: `recovered` messages by sync after seq `after`."""

    conv: str
    recovered: int
    after: int


Effect = (
    Record | Delivered | GroupJoined | GroupChanged | SendReceipt | Connected | Disconnected
    | CaughtUp
)  # fmt: skip
Step = Dial | Request | Effect
R = TypeVar("R")
Steps = Generator[Step, Answer | None, R]


def ordered_endpoints(urls: Sequence[str], user: str) -> list[str]:
    """The endpoints in the order this user tries them: its home node (hash of the id) first."""
    if not urls:
        raise ValueError("no server endpoints given")
    start = zlib.crc32(user.encode()) % len(urls)
    return [urls[(start + i) % len(urls)] for i in range(len(urls))]


CONNECTION_LOST = object()  # what a pending call gets when its connection drops


def checked_ack(event: str, ack: Any) -> dict[str, Any]:
    """The ack of a call, or a ClientError saying why there is none."""
    if ack is CONNECTION_LOST:
        raise ClientError(f"{event}: connection lost before the ack")
    if not isinstance(ack, dict):
        raise ClientError(f"{event}: malformed ack {ack!r}")
    return ack


def _ask(event: str, data: dict[str, Any]) -> Generator[Step, Answer | None, Answer]:
    answer = yield Request(event, data)
    assert answer is not None, "a Request is answered"
    return answer


# ---------------------------------------------------------------- the core


class ClientCore:
    """One user's client state: the max seq per conversation and the messages delivered
    in seq order (`Inbox`), groups, what the stage said in `hello`, and the seed's
    catch-up rule on every (re)connect: ask `latest` for y, and when the local max seq
    x < y, `sync` after x.

    With a stage of feature "receipts", it acknowledges what it holds: after a pushed
    message (and after a catch-up) it asks for `receipt` {conv, seq} with seq the highest
    contiguous one it holds, when that grew since the last receipt; a receipt that
    failed is sent again with the next one's seq. A message pushed twice (or pushed and
    synced) reaches the application once: the `Inbox` delivers each (conv, seq) once."""

    def __init__(self, user: str, urls: str | Sequence[str], *, token: str | None = None) -> None:
        self.user = user
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.endpoints = ordered_endpoints(self.urls, user)
        self.token = token
        self.token_expires_at = unverified_expiry(token)  # for planning a refresh only
        self.connects = 0
        self.inbox = Inbox()
        self.received: dict[str, list[Message]] = {}
        self.received_via: dict[str, int] = {H.VIA_PUSH: 0, H.VIA_SYNC: 0}
        self.groups: dict[str, list[str]] = {}
        self.stage: str | None = None
        self.node: str | None = None
        self.features: set[str] = set()
        self.url: str | None = None
        self.refusal: dict[str, str] | None = None  # why the last connect was refused
        self.closing_error: dict[str, str] | None = None  # the server's `error` before it closed
        self.malformed = 0  # messages dropped because they could not be read
        self.receipted: dict[str, int] = {}  # conv -> seq of the last receipt asked for
        self.receipts_acked: dict[str, int] = {}  # conv -> highest seq acked ok
        self.receipts_in_flight: set[str] = set()  # convs with a receipt not yet answered
        self.receipts_sent = 0
        self.receipts_ok = 0
        self.receipt_failures = 0  # error acks, no ack, connection gone
        self._ids = itertools.count(1)
        self._id_prefix = f"{user}-{uuid.uuid4().hex[:8]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"token": self.token} if self.token is not None else {"user": self.user}

    def record(self, ev: str, now: float, **fields: Any) -> Record:
        """A history event of this user (and its node, when known) at `now`."""
        return Record(H.event(ev, now, user=self.user, node=self.node, **fields))

    def next_client_msg_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    # --- connection

    def connect(self, timeout: float) -> Steps[None]:
        """Dial the endpoints in order until one accepts, then introduce the client
        (`hello`). A refused connect ends the attempt (a wrong identity stays wrong on
        every node); an unreachable node is noted and the next one is tried."""
        errors: list[str] = []
        self.closing_error = None
        for url in self.endpoints:
            self.refusal = None
            answer = yield Dial(url, self.auth, timeout)
            assert answer is not None, "a Dial is answered"
            if answer.failure is not None:
                if self.refusal is not None:
                    raise ConnectRefused(self.refusal["code"], self.refusal["message"])
                errors.append(f"{url}: {answer.failure}")
                continue
            self.url = url
            hello = yield from _ask(p.HELLO, {})
            self.handle_hello(hello.ack)
            yield self.record(H.CONNECT, hello.now, url=url)
            self.connects += 1
            yield Connected(url, self.node, self.connects > 1)
            return
        raise NoServerReachable(f"{self.user}: no endpoint accepted: {'; '.join(errors)}")

    def handle_connect_error(self, data: Any) -> None:
        # A server's refusal arrives as a dict ({"message", "data"}); python-socketio
        # also fires connect_error with a plain string when the node is unreachable,
        # and that must not count as a refusal (the next endpoint is tried instead).
        if isinstance(data, dict):
            self.refusal = p.parse_refusal(data)

    def handle_error(self, data: Any) -> None:
        """The server's `error` event (`{code, message}`), sent before it closes the
        connection (undecodable input, an expired login); the disconnect reports it."""
        if isinstance(data, dict):
            code, message = data.get("code", "unknown"), data.get("message", "")
            self.closing_error = {"code": str(code), "message": str(message)}
        else:
            self.closing_error = {"code": "unknown", "message": str(data)}

    def disconnected(
        self, reason: str | None, *, reconnect: bool, now: float
    ) -> tuple[Record, Disconnected]:
        """The connection is gone. The reason is the server's `error`, when it sent one;
        after an `unauthorized` one the client does not come back by itself (its
        identity would be refused again)."""
        err, self.closing_error = self.closing_error, None
        if err is not None:
            reason = f"{err['code']}: {err['message']}"
            reconnect = reconnect and err["code"] != ErrorCode.UNAUTHORIZED
        return self.record(H.DISCONNECT, now, reason=reason), Disconnected(reason, reconnect)

    # --- requests

    def hello(self) -> Steps[dict[str, Any]]:
        answer = yield from _ask(p.HELLO, {})
        self.handle_hello(answer.ack)
        return answer.ack

    def handle_hello(self, ack: dict[str, Any]) -> None:
        if ack.get("ok"):
            self.stage = ack.get("stage")
            self.node = ack.get("node")
            self.features = set(ack.get("features") or [])
            if self.token is not None and isinstance(ack.get("user"), str):
                self.user = ack["user"]  # with a token, the server says who we are

    def send(
        self,
        *,
        to: str | None,
        group: str | None,
        body: str,
        client_msg_id: str | None,
        intended: float | None,
        now: float,
    ) -> Steps[dict[str, Any]]:
        """Send a message (to a user or a group); records the send and its ack."""
        cmid = client_msg_id or self.next_client_msg_id()
        conv = p.group_conv(group) if group is not None else p.dm_conv(self.user, to or "")
        payload: dict[str, Any] = {"client_msg_id": cmid, "body": body, "sent_at": now}
        if group is not None:
            payload["group"] = group
        else:
            payload["to"] = to
        warmup = cmid.startswith(H.WARMUP_PREFIX)  # a warm-up's message: nothing recorded
        if not warmup:
            yield self.record(
                H.SEND, now, conv=conv, msg=cmid, intended=now if intended is None else intended
            )
        answer = yield from _ask(p.SEND, payload)
        ack = answer.ack
        err = None if ack.get("ok") else (ack.get("error") or {}).get("code", "unknown")
        if not warmup:
            yield self.record(
                H.ACK, answer.now, conv=conv, msg=cmid, ok=bool(ack.get("ok")), err=err,
                seq=ack.get("seq"),
            )  # fmt: skip
        return ack

    def create_group(self, members: Sequence[str], name: str) -> Steps[dict[str, Any]]:
        answer = yield from _ask(p.CREATE_GROUP, {"members": list(members), "name": name})
        ack = answer.ack
        if ack.get("ok"):
            self.groups[ack["group_id"]] = list(ack.get("members") or members)
            yield self.record(
                H.GROUP, answer.now, conv=ack.get("conv"), members=self.groups[ack["group_id"]]
            )
        return ack

    def refresh(self) -> Steps[dict[str, Any]]:
        """Trade the token for a new one (feature "authz"); the new one is used for
        every later (re)connect. Returns the ack ({ok, token, expires_at})."""
        ack = (yield from _ask(p.REFRESH, {})).ack
        token = ack.get("token")
        if ack.get("ok") and isinstance(token, str) and token:
            self.token = token
            expires = ack.get("expires_at")
            if isinstance(expires, int | float) and not isinstance(expires, bool):
                self.token_expires_at = float(expires)
            else:
                self.token_expires_at = unverified_expiry(token)
        return ack

    def group_add(self, group: str, members: Sequence[str]) -> Steps[dict[str, Any]]:
        """Add members to a group (its creator only); the ack lists the members now."""
        return (yield from self._group_members(p.GROUP_ADD, group, members))

    def group_remove(self, group: str, members: Sequence[str]) -> Steps[dict[str, Any]]:
        """Remove members from a group (its creator only)."""
        return (yield from self._group_members(p.GROUP_REMOVE, group, members))

    def _group_members(
        self, event: str, group: str, members: Sequence[str]
    ) -> Steps[dict[str, Any]]:
        ack = (yield from _ask(event, {"group": group, "members": list(members)})).ack
        now = ack.get("members")
        if ack.get("ok") and isinstance(now, list):
            if self.user in now:
                self.groups[group] = [str(m) for m in now]
            else:
                self.groups.pop(group, None)
        return ack

    def group_leave(self, group: str) -> Steps[dict[str, Any]]:
        """Leave a group."""
        ack = (yield from _ask(p.GROUP_LEAVE, {"group": group})).ack
        if ack.get("ok"):
            self.groups.pop(group, None)
        return ack

    def latest(self) -> Steps[dict[str, Any]]:
        return (yield from _ask(p.LATEST, {})).ack

    def sync(self, conv: str, after_seq: int, limit: int = SYNC_PAGE) -> Steps[dict[str, Any]]:
        request = {"conv": conv, "after_seq": after_seq, "limit": limit}
        return (yield from _ask(p.SYNC, request)).ack

    def catch_up(self, only: Mapping[str, int] | None = None) -> Steps[None]:
        """The seed's rule: ask `latest` (y); for each conversation with x < y, sync after x.

        `only` limits the catch-up to given conversations (gap repair) without `latest`.
        """
        if p.FEATURE_HISTORY not in self.features:
            return
        if only is None:
            ack = yield from self.latest()
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
                answer = yield from _ask(
                    p.SYNC, {"conv": conv, "after_seq": after, "limit": SYNC_PAGE}
                )
                ack = answer.ack
                if not ack.get("ok"):
                    break
                messages = ack.get("messages") or []
                floor = ack.get("visible_from")
                if isinstance(floor, int) and floor > after:
                    for effect in self._start_after(conv, floor, answer.now):
                        recovered += isinstance(effect, Delivered)
                        yield effect
                for m in messages:
                    for effect in self.receive(m, H.VIA_SYNC, answer.now):
                        recovered += isinstance(effect, Delivered)
                        yield effect
                yield self.record(
                    H.SYNC, answer.now, conv=conv, after_seq=after, n=len(messages),
                    latest_seq=ack.get("latest_seq"),
                )  # fmt: skip
                latest = int(ack.get("latest_seq") or 0)
                if not messages or not ack.get("has_more"):
                    break
            due = self.receipt_due(conv)
            if due is not None:
                yield due
            yield CaughtUp(conv, recovered, start)

    # --- inbound

    def receive(self, data: Any, via: str, now: float) -> list[Effect]:
        """A message that arrived (pushed, or in a sync page): what is delivered now, in
        seq order, with a `recv` record each. A malformed one is dropped."""
        try:
            msg = Message.from_dict(data)
        except (KeyError, TypeError, ValueError):
            self.malformed += 1
            return []
        effects = self._delivered(self.inbox.accept(msg, via), now)
        if via == H.VIA_PUSH and msg.seq is not None:
            due = self.receipt_due(msg.conv)
            if due is not None:
                effects.append(due)
        return effects

    def _delivered(self, released: list[tuple[Message, str]], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for m, path in released:
            self.received.setdefault(m.conv, []).append(m)
            self.received_via[path] += 1
            if not m.client_msg_id.startswith(H.WARMUP_PREFIX):
                fields = {"conv": m.conv, "msg": m.client_msg_id, "seq": m.seq, "sender": m.sender}
                effects.append(self.record(H.RECV, now, **fields, via=path))
            effects.append(Delivered(m, path))
        return effects

    def _start_after(self, conv: str, seq: int, now: float) -> list[Effect]:
        """The stage says `conv` starts for this client after `seq` (joined later)."""
        return self._delivered(self.inbox.start_after(conv, seq), now)

    # --- receipts

    def receipt_due(self, conv: str) -> SendReceipt | None:
        """The receipt to send for `conv` now, if the stage takes receipts, none for `conv`
        is in flight, and the highest contiguous seq held grew since the last one asked
        for (which counts as sent). One in flight per conversation: a busy group costs one
        receipt per round trip, not one per message."""
        if p.FEATURE_RECEIPTS not in self.features or conv in self.receipts_in_flight:
            return None
        seq = self.inbox.max_seq.get(conv, 0)
        if seq <= self.receipted.get(conv, 0):
            return None
        self.receipted[conv] = seq
        self.receipts_sent += 1
        self.receipts_in_flight.add(conv)
        return SendReceipt(conv, seq)

    def receipt_done(self, conv: str, seq: int, ack: Any) -> SendReceipt | None:
        """The outcome of a receipt: its ack, or None when none came. After a failure the
        next receipt for `conv` is due again from what was acked. Returns the receipt due
        next for `conv` (what arrived while this one was in flight), if any."""
        self.receipts_in_flight.discard(conv)
        if isinstance(ack, dict) and ack.get("ok") is True:
            self.receipts_ok += 1
            self.receipts_acked[conv] = max(seq, self.receipts_acked.get(conv, 0))
            return self.receipt_due(conv)
        self.receipt_failures += 1
        if self.receipted.get(conv) == seq:
            self.receipted[conv] = self.receipts_acked.get(conv, 0)
        return None  # the next push or catch-up asks again

    def group_created(self, data: Any) -> list[Effect]:
        if isinstance(data, dict) and isinstance(data.get("group_id"), str):
            self.groups[data["group_id"]] = list(data.get("members") or [])
            return [GroupJoined(data)]
        return []

    def group_changed(self, data: Any, now: float) -> list[Effect]:
        """The `group_changed` push: update the members known, record a `group_change`.
        A malformed one is dropped (and counted in `malformed`)."""
        try:
            group = p.check_group_id(data["group"])
            added = _user_list(data.get("added"))
            removed = _user_list(data.get("removed"))
            by = p.check_user_id(data["by"], "by")
        except (KeyError, TypeError, AttributeError, p.ProtocolError):
            self.malformed += 1
            return []
        if self.user in removed:
            self.groups.pop(group, None)
        else:
            members = set(self.groups.get(group, ())) | set(added)
            if self.user in added:
                members.add(self.user)
            self.groups[group] = sorted(members - set(removed))
        rec = self.record(
            H.GROUP_CHANGE, now, conv=p.group_conv(group), added=added, removed=removed, by=by
        )
        effects: list[Effect] = [rec, GroupChanged(data)]
        floor = data.get("from_seq")
        if self.user in added and isinstance(floor, int) and floor >= 0:
            effects += self._start_after(p.group_conv(group), floor, now)
        return effects


def _user_list(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("a list of user ids")
    return [p.check_user_id(u) for u in value]
