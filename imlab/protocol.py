"""The client protocol every stage speaks: event names, payload types, conversation
ids, error codes and the validation of every inbound payload (docs/PROTOCOL.md).

Pure data and checks, no I/O: servers, clients, load tests and the simulator all
import this module, so a payload means the same thing everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

# Client -> server events (each takes an ack callback).
HELLO = "hello"
SEND = "send"
CREATE_GROUP = "create_group"
LATEST = "latest"
SYNC = "sync"
CLIENT_EVENTS = (HELLO, SEND, CREATE_GROUP, LATEST, SYNC)  # what every stage answers
# Events of the features "authz" and "receipts" (a stage that lacks the feature answers
# `unsupported`, like any unknown event).
REFRESH = "refresh"
RECEIPT = "receipt"
GROUP_ADD = "group_add"
GROUP_REMOVE = "group_remove"
GROUP_LEAVE = "group_leave"
EXTENDED_CLIENT_EVENTS = (REFRESH, RECEIPT, GROUP_ADD, GROUP_REMOVE, GROUP_LEAVE)
ALL_CLIENT_EVENTS = CLIENT_EVENTS + EXTENDED_CLIENT_EVENTS
# Names Socket.IO (server or client libraries) uses for its own hooks: a client that emits
# one is refused with `bad_request` and its session is left as it was.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "error", "message",
     "newListener", "removeListener", "__disconnect_final"}
)  # fmt: skip

# Server -> client events.
MESSAGE = "message"
GROUP_CREATED = "group_created"
GROUP_CHANGED = "group_changed"  # {group, added, removed, by} to the members, old and new
# Sent just before the server closes a connection: `{"code", "message"}` says why
# (`bad_request`: a packet that could not be decoded; `unauthorized`: the token expired).
ERROR = "error"

# Feature names a stage announces in its `hello` ack.
FEATURE_DM = "dm"
FEATURE_GROUPS = "groups"
FEATURE_HISTORY = "history"
FEATURE_TOKEN_AUTH = "token_auth"
FEATURE_AUTHZ = "authz"  # refresh, group admin (add/remove by the creator), leave, rate limits
FEATURE_RECEIPTS = "receipts"  # the client acknowledges what it holds with `receipt`
# The client events a feature adds to the base five.
FEATURE_EVENTS: dict[str, tuple[str, ...]] = {
    FEATURE_AUTHZ: (REFRESH, GROUP_ADD, GROUP_REMOVE, GROUP_LEAVE),
    FEATURE_RECEIPTS: (RECEIPT,),
}

MAX_BODY_BYTES = 4096
MAX_GROUP_MEMBERS = 1000
MAX_GROUP_NAME = 100
MAX_SYNC_LIMIT = 500
DEFAULT_SYNC_LIMIT = 100
MAX_CLIENT_MSG_ID = 128
MAX_SEQ = 2**62

# Matched with `fullmatch`: `$` would also accept a trailing newline ("alice\n").
_USER_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_GROUP_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_CLIENT_MSG_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLIENT_MSG_ID}}}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    RECIPIENT_OFFLINE = "recipient_offline"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A request the server refuses; becomes an error ack (or a refused connect)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def ack(self) -> dict[str, Any]:
        return error_ack(self.code, self.message)


class RateLimited(ProtocolError):
    """Too many requests: the error ack carries `retry_after`, the seconds after which
    the same request would be allowed (`imlab.ratelimit` computes it)."""

    def __init__(self, retry_after: float, message: str = "too many requests") -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message)
        self.retry_after = max(0.0, float(retry_after)) if math.isfinite(retry_after) else 0.0

    def ack(self) -> dict[str, Any]:
        ack = super().ack()
        ack["error"]["retry_after"] = round(self.retry_after, 3)
        return ack


def ok_ack(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def error_ack(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message}}


def bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


# ---------------------------------------------------------------- identifiers


def check_user_id(value: object, field: str = "user") -> str:
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise bad(f"{field} must be 1-64 characters of [A-Za-z0-9_.-]")
    return value


def check_group_id(value: object) -> str:
    if not isinstance(value, str) or not _GROUP_ID_RE.fullmatch(value):
        raise bad("group must be 1-64 characters of [A-Za-z0-9_-]")
    return value


def dm_conv(a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


def group_conv(group_id: str) -> str:
    return f"group:{group_id}"


ConvKind = Literal["dm", "group"]


@dataclass(frozen=True, slots=True)
class Conv:
    """A parsed conversation id: `dm:<a>:<b>` or `group:<id>`."""

    kind: ConvKind
    id: str
    members: tuple[str, ...] = ()  # the two users of a dm; empty for a group

    @property
    def group_id(self) -> str:
        return self.id.removeprefix("group:")


def parse_conv(value: object) -> Conv:
    if not isinstance(value, str):
        raise bad("conv must be a string")
    kind, _, rest = value.partition(":")
    if kind == "group":
        check_group_id(rest)
        return Conv("group", value)
    if kind == "dm":
        a, sep, b = rest.partition(":")
        if not sep:
            raise bad("dm conv must be dm:<a>:<b>")
        check_user_id(a, "conv")
        check_user_id(b, "conv")
        if a >= b:
            raise bad("dm conv must name two different users in sorted order")
        return Conv("dm", value, (a, b))
    raise bad("conv must start with dm: or group:")


# ---------------------------------------------------------------- payloads


def _require_dict(payload: object) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise bad("payload must be a JSON object")
    return payload


def _finite_number(value: object, field: str) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise bad(f"{field} must be a finite number")


def check_text(value: object, field: str) -> str:
    """A string that UTF-8 can encode: a lone surrogate ("\\ud800") is refused here, not
    by the Redis client after an id was taken; and no U+0000, which PostgreSQL's text
    cannot hold (v5 stores there; the fuzz found it as an `internal`)."""
    if not isinstance(value, str):
        raise bad(f"{field} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(f"{field} must be valid Unicode text (no lone surrogates)") from None
    if "\x00" in value:
        raise bad(f"{field} may not contain U+0000 (NUL)")
    return value


def _int_field(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(f"{field} must be an integer in [{lo}, {hi}]")
    return value


@dataclass(frozen=True, slots=True)
class SendRequest:
    client_msg_id: str
    body: str
    sent_at: float
    to: str | None = None
    group: str | None = None

    def conv_for(self, sender: str) -> str:
        if self.group is not None:
            return group_conv(self.group)
        assert self.to is not None
        return dm_conv(sender, self.to)


def parse_send(payload: object, sender: str) -> SendRequest:
    p = _require_dict(payload)
    to, group = p.get("to"), p.get("group")
    if (to is None) == (group is None):
        raise bad("send needs exactly one of 'to' or 'group'")
    if to is not None:
        check_user_id(to, "to")
        if to == sender:
            raise bad("cannot send a direct message to yourself")
    if group is not None:
        check_group_id(group)
    cmid = p.get("client_msg_id")
    if not isinstance(cmid, str) or not _CLIENT_MSG_ID_RE.fullmatch(cmid):
        raise bad(f"client_msg_id must be 1-{MAX_CLIENT_MSG_ID} printable ASCII characters")
    body = check_text(p.get("body"), "body")
    if len(body.encode("utf-8")) > MAX_BODY_BYTES:
        raise bad(f"body exceeds {MAX_BODY_BYTES} bytes")
    sent_at = _finite_number(p.get("sent_at"), "sent_at")
    return SendRequest(client_msg_id=cmid, body=body, sent_at=sent_at, to=to, group=group)


@dataclass(frozen=True, slots=True)
class CreateGroupRequest:
    members: tuple[str, ...]  # sorted, unique, includes the creator
    name: str

    def notice(self, group_id: str, creator: str) -> dict[str, Any]:
        """The `group_created` event every member gets."""
        return {"group_id": group_id, "conv": group_conv(group_id), "name": self.name,
                "members": list(self.members), "creator": creator}  # fmt: skip

    def ack(self, group_id: str) -> dict[str, Any]:
        """The creator's ack."""
        return ok_ack(group_id=group_id, conv=group_conv(group_id), members=list(self.members))


def parse_create_group(payload: object, creator: str) -> CreateGroupRequest:
    p = _require_dict(payload)
    members = p.get("members")
    if not isinstance(members, list) or not members:
        raise bad("members must be a non-empty list of user ids")
    if len(members) > MAX_GROUP_MEMBERS:
        raise bad(f"a group has at most {MAX_GROUP_MEMBERS} members")
    unique = {check_user_id(m, "members[]") for m in members} | {creator}
    name = p.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_GROUP_NAME:
        raise bad(f"name must be a string of at most {MAX_GROUP_NAME} characters")
    check_text(name, "name")
    if _CONTROL_RE.search(name):
        raise bad("name must not contain control characters")
    return CreateGroupRequest(members=tuple(sorted(unique)), name=name)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    conv: Conv
    after_seq: int
    limit: int


def parse_sync(payload: object) -> SyncRequest:
    p = _require_dict(payload)
    conv = parse_conv(p.get("conv"))
    after = _int_field(p.get("after_seq", 0), "after_seq", 0, MAX_SEQ)
    limit = _int_field(p.get("limit", DEFAULT_SYNC_LIMIT), "limit", 1, MAX_SYNC_LIMIT)
    return SyncRequest(conv=conv, after_seq=after, limit=limit)


@dataclass(frozen=True, slots=True)
class ReceiptRequest:
    """`receipt`: the client holds every message of `conv` up to `seq` (cumulative)."""

    conv: Conv
    seq: int


def parse_receipt(payload: object) -> ReceiptRequest:
    p = _require_dict(payload)
    conv = parse_conv(p.get("conv"))
    seq = _int_field(p.get("seq"), "seq", 1, MAX_SEQ)
    return ReceiptRequest(conv=conv, seq=seq)


@dataclass(frozen=True, slots=True)
class GroupChangeRequest:
    """`group_add` / `group_remove`: members sorted and unique (the caller may be one)."""

    group: str
    members: tuple[str, ...]

    @property
    def conv(self) -> str:
        return group_conv(self.group)


def parse_group_change(payload: object) -> GroupChangeRequest:
    p = _require_dict(payload)
    group = check_group_id(p.get("group"))
    members = p.get("members")
    if not isinstance(members, list) or not members:
        raise bad("members must be a non-empty list of user ids")
    if len(members) > MAX_GROUP_MEMBERS:
        raise bad(f"at most {MAX_GROUP_MEMBERS} members at a time")
    unique = {check_user_id(m, "members[]") for m in members}
    return GroupChangeRequest(group=group, members=tuple(sorted(unique)))


def parse_group_leave(payload: object) -> str:
    """`group_leave`: the group id."""
    return check_group_id(_require_dict(payload).get("group"))


def group_changed(
    group: str, *, added: Iterable[str] = (), removed: Iterable[str] = (), by: str
) -> dict[str, Any]:
    """The `group_changed` push: who joined and who left `group`, and who did it (a
    member who left by themselves is `by` and in `removed`)."""
    return {"group": group, "conv": group_conv(group), "added": sorted(set(added)),
            "removed": sorted(set(removed)), "by": by}  # fmt: skip


def parse_empty(payload: object) -> None:
    _require_dict(payload)


def check_event_name(event: object) -> str:
    """A name a client may emit: a string that is not one of Socket.IO's own hooks."""
    if not isinstance(event, str):
        raise bad("an event name must be a string")
    if event in RESERVED_EVENTS:
        raise bad(f"{event!r} is reserved for Socket.IO itself and cannot be sent by a client")
    return event


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    """A stored (or, in v1, relayed) message, as pushed in the `message` event."""

    conv: str
    msg_id: str
    seq: int | None
    sender: str
    body: str
    sent_at: float
    server_ts: float
    client_msg_id: str

    def to_dict(self) -> dict[str, Any]:
        # Field by field: `asdict` deep-copies each value, 5.6 µs against 0.2, and every
        # stage calls this once or twice per message.
        return {
            "conv": self.conv,
            "msg_id": self.msg_id,
            "seq": self.seq,
            "sender": self.sender,
            "body": self.body,
            "sent_at": self.sent_at,
            "server_ts": self.server_ts,
            "client_msg_id": self.client_msg_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        seq = d.get("seq")
        return cls(
            conv=str(d["conv"]),
            msg_id=str(d["msg_id"]),
            seq=None if seq is None else int(seq),
            sender=str(d["sender"]),
            body=str(d["body"]),
            sent_at=float(d["sent_at"]),
            server_ts=float(d["server_ts"]),
            client_msg_id=str(d["client_msg_id"]),
        )


def refusal(code: ErrorCode, message: str) -> dict[str, Any]:
    """The data of a refused connect; clients get `{"message": .., "data": <this>}`."""
    return {"code": str(code), "message": message}


def parse_refusal(error: object) -> dict[str, str]:
    """`{"code", "message"}` from what a client's `connect_error` handler receives."""
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and "code" in data:
            return {"code": str(data["code"]), "message": str(data.get("message", ""))}
        return {"code": "refused", "message": str(error.get("message", error))}
    return {"code": "refused", "message": str(error)}
