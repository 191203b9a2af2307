"""The history a run records: one JSON object per line, one kind of event each
(docs/PROTOCOL.md, the history). This module names every event and its fields once;
the clients, the simulator and the fault injector write through `event()`, the
checker reads `Event`s.

Every event has `t` (epoch seconds) and `ev`. The fields of each kind:

| ev | always | when known |
|---|---|---|
| `send` | user, conv, msg, intended | node |
| `ack` | user, conv, msg, ok, err, seq | node |
| `recv` | user, conv, msg, sender, via (`push` or `sync`) | seq, node |
| `connect` | user | url, node, ok, err |
| `disconnect` | user | reason, node |
| `sync` | user, conv, after_seq, n, latest_seq | ok, err, node |
| `group` | user, conv, members | node |
| `group_change` | user, conv, added, removed, by | node |
| `fault` | kind, target, start, end | verified, detail |
| `revoked` | user | |

`revoked` is written by the fault injector (`token-revoke`), one per user whose tokens
it revoked, at the moment of the revocation; the checker excuses that user from
messages acked after it (less a grace, reports/checks/index.py).
"""

from __future__ import annotations

from typing import Any, Final, TypedDict

SEND: Final = "send"
ACK: Final = "ack"
RECV: Final = "recv"
CONNECT: Final = "connect"
DISCONNECT: Final = "disconnect"
SYNC: Final = "sync"
GROUP: Final = "group"
GROUP_CHANGE: Final = "group_change"
FAULT: Final = "fault"
REVOKED: Final = "revoked"

# The client ids of a load's warm-up messages (`imlab load --warmup`): they are sent,
# stored and pushed like any other, and no client records an event for them, so the
# checker judges the measured window alone.
WARMUP_PREFIX: Final = "warm-"

VIA_PUSH: Final = "push"
VIA_SYNC: Final = "sync"

# ev -> (fields every such event has, fields it may have)
FIELDS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    SEND: (frozenset({"user", "conv", "msg", "intended"}), frozenset({"node"})),
    ACK: (frozenset({"user", "conv", "msg", "ok", "err", "seq"}), frozenset({"node"})),
    RECV: (frozenset({"user", "conv", "msg", "sender", "via"}), frozenset({"seq", "node"})),
    CONNECT: (frozenset({"user"}), frozenset({"url", "node", "ok", "err"})),
    DISCONNECT: (frozenset({"user"}), frozenset({"reason", "node"})),
    SYNC: (
        frozenset({"user", "conv", "after_seq", "n", "latest_seq"}),
        frozenset({"ok", "err", "node"}),
    ),
    GROUP: (frozenset({"user", "conv", "members"}), frozenset({"node"})),
    GROUP_CHANGE: (frozenset({"user", "conv", "added", "removed", "by"}), frozenset({"node"})),
    FAULT: (
        frozenset({"kind", "target", "start", "end"}),
        frozenset({"verified", "detail"}),
    ),
    REVOKED: (frozenset({"user"}), frozenset()),
}


class Event(TypedDict, total=False):
    """One history record as read back. Only `t` and `ev` are always present."""

    t: float
    ev: str
    user: str
    conv: str
    msg: str
    seq: int | None
    ok: bool
    err: str | None
    via: str
    sender: str
    node: str
    url: str
    reason: str | None
    intended: float
    members: list[str]
    added: list[str]
    removed: list[str]
    by: str
    after_seq: int
    n: int
    latest_seq: int | None
    kind: str
    target: str
    start: float
    end: float | None
    verified: bool
    detail: list[str]


class SchemaError(ValueError):
    """An event written with a field its kind lacks, or without one it needs."""


def event(ev: str, t: float, **fields: Any) -> dict[str, Any]:
    """One history record of kind `ev` at time `t`; optional fields that are None are
    left out. Raises SchemaError for an unknown kind or a wrong field."""
    try:
        required, optional = FIELDS[ev]
    except KeyError:
        raise SchemaError(f"unknown history event {ev!r}") from None
    missing = required - fields.keys()
    unknown = fields.keys() - required - optional
    if missing or unknown:
        raise SchemaError(
            f"{ev}: missing {sorted(missing)}" if missing else f"{ev}: unknown {sorted(unknown)}"
        )
    rec: dict[str, Any] = {"t": t, "ev": ev}
    for key, value in fields.items():
        if value is not None or key in required:
            rec[key] = value
    return rec
