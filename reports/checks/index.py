"""The shared input of every check: the run's history indexed in one pass.

`build_index` walks the sorted history once (sends, acks, groups, connections, faults)
and then classifies every `recv` once; the checks only read the result.

Definitions the index rests on:
- expected recipients of a message: the conversation's members (the two users of
  a dm; for a group, the union of the manifest's and the history's member lists)
  minus the sender. Self-receipts (a sender's echo) are left out of all delivery
  and ordering accounting.
- a delivery is the first receipt of a message by an expected recipient; later
  receipts of it by that user are duplicates.
- a `recv` with no `via` counts as push.
- a revoked user (a `revoked` event at T, the fault `token-revoke`) is not expected to
  receive any message whose send was acked ok at or after T - `REVOKE_GRACE` (such a
  recipient is `excused`; a delivery to it still counts, never as unexpected), and its
  own sends from T - `REVOKE_GRACE` on that were never acked are `cut_off`: the stage
  shut it out, so their fate is known (nothing is expected of them) and they are
  judged, not anomalies. Messages acked before T - `REVOKE_GRACE` are expected of it as
  usual: in every measured run they were delivered long before T.
- a message's fate (`fate`): acked ok and delivered to every expected recipient
  (`complete`); acked ok and missing some by the judging end (`lost`), unless its
  ack itself came after the end (`unjudged`); acked with an error (`refused`); never
  acked because its sender had been revoked (`cut_off`); never acked (`never_acked`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from imlab.experiment.history import (
    ACK,
    CONNECT,
    DISCONNECT,
    FAULT,
    GROUP,
    RECV,
    REVOKED,
    SEND,
    SYNC,
    VIA_SYNC,
    Event,
)
from reports.history import Run

EXAMPLES = 20  # examples of an anomaly kept in metrics.json
_EMPTY: frozenset[str] = frozenset()

COMPLETE: Final = "complete"
LOST: Final = "lost"
UNJUDGED: Final = "unjudged"
REFUSED: Final = "refused"
NEVER_ACKED: Final = "never_acked"
CUT_OFF: Final = "cut_off"

# Seconds before a revocation from which a revoked user's deliveries are not expected,
# and its never-acked sends are put down to the revocation (docs/PROTOCOL.md, section 7).
REVOKE_GRACE: Final = 2.0


@dataclass(slots=True)
class Msg:
    """What the checker knows about one client_msg_id."""

    idx: int  # position in global send order
    author: str
    conv: str
    t: float
    intended: float
    members: frozenset[str] = _EMPTY
    # members not expected to receive it: revoked before its ack (plus the grace)
    excused: frozenset[str] = _EMPTY
    cut_off: bool = False  # never acked, sent by a user revoked (less the grace) before
    first_ack_t: float | None = None
    ok_t: float | None = None
    err: str | None = None
    seq: int | None = None
    # recipient -> True if the first receipt came by sync
    recipients: dict[str, bool] | None = None
    last_push: float | None = None


# One delivery in a recipient's stream of one conversation: (message, by sync, seq).
Delivery = tuple[Msg, bool, int | None]


@dataclass
class Tally:
    """Everything accumulated while walking the history once."""

    msgs: dict[str, Msg] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)
    retried: int = 0
    acks_without_send: int = 0
    connects: list[float] = field(default_factory=list)
    connect_failed: int = 0
    disconnects: list[float] = field(default_factory=list)
    syncs: list[float] = field(default_factory=list)
    fault_events: list[Event] = field(default_factory=list)
    revoked: dict[str, float] = field(default_factory=dict)  # user -> first revocation
    recvs: list[Event] = field(default_factory=list)


def _user(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _dm_members(conv: str, author: str) -> frozenset[str]:
    rest = conv[3:]
    parts = rest.split(":")
    if len(parts) == 2:
        return frozenset(parts)
    # User ids containing ':' make the id ambiguous; the author disambiguates.
    if rest.startswith(author + ":"):
        return frozenset((author, rest[len(author) + 1 :]))
    if rest.endswith(":" + author):
        return frozenset((author, rest[: -len(author) - 1]))
    return _EMPTY


def _send_conv(e: Event, author: str) -> str:
    conv = e.get("conv")
    if isinstance(conv, str) and conv:
        return conv
    raw: dict[str, Any] = dict(e)
    if raw.get("group") is not None:
        return f"group:{raw['group']}"
    if raw.get("to") is not None:
        a, b = sorted((author, _user(raw["to"])))
        return f"dm:{a}:{b}"
    return ""


def number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def walk(run: Run) -> Tally:
    """One pass over the sorted history: sends, acks, groups, connections; recvs set aside."""
    tally = Tally()
    msgs = tally.msgs
    for gid, members in (run.manifest.get("groups") or {}).items():
        tally.groups.setdefault(str(gid), set()).update(_user(u) for u in members)
    acks: list[Event] = []
    recvs = tally.recvs
    for e in run.events:
        ev = e["ev"]
        if ev == RECV:
            recvs.append(e)
        elif ev == SEND:
            msg = e.get("msg")
            if msg is None:
                continue
            if msg in msgs:
                tally.retried += 1
                continue
            author = _user(e.get("user"))
            conv = _send_conv(e, author)
            t = e["t"]
            intended = number(e.get("intended"))
            msgs[msg] = Msg(
                idx=len(msgs),
                author=author,
                conv=conv,
                t=t,
                intended=t if intended is None else intended,
            )
        elif ev == ACK:
            acks.append(e)
        elif ev == CONNECT:
            if e.get("ok") is False:
                tally.connect_failed += 1
            else:
                tally.connects.append(e["t"])
        elif ev == DISCONNECT:
            tally.disconnects.append(e["t"])
        elif ev == SYNC:
            tally.syncs.append(e["t"])
        elif ev == GROUP:
            conv = e.get("conv") or ""
            if conv.startswith("group:"):
                tally.groups.setdefault(conv[6:], set()).update(
                    _user(u) for u in e.get("members") or ()
                )
        elif ev == FAULT:
            tally.fault_events.append(e)
        elif ev == REVOKED:
            user = _user(e.get("user"))
            tally.revoked[user] = min(e["t"], tally.revoked.get(user, math.inf))

    # Acks are applied after all sends so that equal timestamps across files are harmless.
    for e in acks:
        m = msgs.get(e.get("msg", ""))
        if m is None:
            tally.acks_without_send += 1
            continue
        t = e["t"]
        if m.first_ack_t is None:
            m.first_ack_t = t
        if e.get("ok") is True:
            if m.ok_t is None:
                m.ok_t = t
                m.err = None
            seq = e.get("seq")
            if seq is not None:
                m.seq = seq
            ack_conv = e.get("conv")
            if not m.conv and isinstance(ack_conv, str):
                m.conv = ack_conv
        elif m.ok_t is None:
            err = e.get("err")
            m.err = str(err) if err is not None else "unknown"

    member_cache: dict[str, frozenset[str]] = {}
    for m in msgs.values():
        conv = m.conv
        if conv.startswith("dm:"):
            m.members = _dm_members(conv, m.author)
        elif conv.startswith("group:"):
            cached = member_cache.get(conv)
            if cached is None:
                cached = frozenset(tally.groups.get(conv[6:], ()))
                member_cache[conv] = cached
            m.members = cached
    if tally.revoked:
        _excuse(tally)
    return tally


def _excuse(tally: Tally) -> None:
    """The revocation rule (module docstring): excused recipients, cut-off sends."""
    cutoff = {u: t - REVOKE_GRACE for u, t in tally.revoked.items()}
    for m in tally.msgs.values():
        if m.ok_t is None:
            since = cutoff.get(m.author)
            m.cut_off = m.err is None and since is not None and m.t >= since
            continue
        excused = [u for u in m.members if u != m.author and m.ok_t >= cutoff.get(u, math.inf)]
        if excused:
            m.excused = frozenset(excused)


@dataclass
class Deliveries:
    streams: dict[tuple[str, str], list[Delivery]] = field(default_factory=dict)
    # self-receipts with a seq, per (user, conv): (seq, by sync); only shapes sync gaps
    self_seqs: dict[tuple[str, str], list[tuple[int, bool]]] = field(default_factory=dict)
    self_receipts: int = 0
    duplicated: int = 0
    duplicated_pairs: set[tuple[str, str]] = field(default_factory=set)
    unexpected_unknown: int = 0
    unexpected_not_recipient: int = 0
    unexpected_examples: list[dict[str, Any]] = field(default_factory=list)
    push_ok: int = 0
    sync_ok: int = 0
    unacked_by_error: int = 0
    unacked_by_never: int = 0
    push_lat: list[float] = field(default_factory=list)
    push_t: list[float] = field(default_factory=list)
    sync_lat: list[float] = field(default_factory=list)
    sync_t: list[float] = field(default_factory=list)


def deliver(tally: Tally) -> Deliveries:
    """Classify every recv: self, unexpected, duplicate or a first delivery."""
    d = Deliveries()
    msgs = tally.msgs
    streams = d.streams
    push_lat, push_t = d.push_lat, d.push_t
    sync_lat, sync_t = d.sync_lat, d.sync_t
    for e in tally.recvs:
        user = _user(e.get("user"))
        msg = e.get("msg", "")
        m = msgs.get(msg)
        if m is None:
            d.unexpected_unknown += 1
            if len(d.unexpected_examples) < EXAMPLES:
                d.unexpected_examples.append(
                    {"msg": msg, "user": user, "t": e["t"], "why": "never sent"}
                )
            continue
        by_sync = e.get("via") == VIA_SYNC
        seq = e.get("seq")
        if seq is None:
            seq = m.seq
        elif m.seq is None:
            m.seq = seq
        if user == m.author:
            d.self_receipts += 1
            if seq is not None:
                d.self_seqs.setdefault((user, m.conv), []).append((seq, by_sync))
            continue
        if user not in m.members:
            d.unexpected_not_recipient += 1
            if len(d.unexpected_examples) < EXAMPLES:
                d.unexpected_examples.append(
                    {"msg": msg, "user": user, "t": e["t"], "why": "not a recipient"}
                )
            continue
        rec = m.recipients
        if rec is None:
            rec = m.recipients = {}
        elif user in rec:
            d.duplicated += 1
            d.duplicated_pairs.add((msg, user))
            continue
        rec[user] = by_sync
        key = (user, m.conv)
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = []
        stream.append((m, by_sync, seq))
        t = e["t"]
        if m.ok_t is None:
            if m.err is None:
                d.unacked_by_never += 1
            else:
                d.unacked_by_error += 1
        elif by_sync:
            d.sync_ok += 1
            sync_lat.append(t - m.intended)
            sync_t.append(t)
        else:
            d.push_ok += 1
            push_lat.append(t - m.intended)
            push_t.append(t)
            if m.last_push is None or t > m.last_push:
                m.last_push = t
    return d


@dataclass
class Clock:
    t0: float  # series origin and throughput window start: started_at, else the first event
    stop: float  # throughput window end: ended_at, else the last event
    end: float  # judging end: drain_end, else ended_at, else the last event
    last: float  # last moment the series must cover


def make_clock(run: Run) -> Clock:
    man = run.manifest
    first = run.events[0]["t"] if run.events else 0.0
    last_ev = run.events[-1]["t"] if run.events else first
    started = number(man.get("started_at"))
    ended = number(man.get("ended_at"))
    drain = number(man.get("drain_end"))
    t0 = started if started is not None else first
    stop = ended if ended is not None else last_ev
    end = drain if drain is not None else stop
    return Clock(t0=t0, stop=stop, end=end, last=max(last_ev, end, t0))


def excused_missing(m: Msg) -> int:
    """Excused recipients (revoked) of the message who did not receive it."""
    if not m.excused:
        return 0
    rec = m.recipients or {}
    return sum(1 for u in m.excused if u not in rec)


def expected_count(m: Msg) -> int:
    """Recipients expected to receive the message: the members less the sender and
    the excused ones that did not receive it (one that did counts as delivered)."""
    return len(m.members) - (m.author in m.members) - excused_missing(m)


def missing(m: Msg) -> int:
    """Expected recipients of the message who never received it."""
    return expected_count(m) - (len(m.recipients) if m.recipients else 0)


def missing_users(m: Msg) -> list[str]:
    rec = m.recipients or {}
    return sorted(u for u in m.members if u != m.author and u not in rec and u not in m.excused)


def fate(m: Msg, end: float) -> str:
    """COMPLETE, LOST, UNJUDGED, REFUSED, CUT_OFF or NEVER_ACKED, judged at `end`."""
    if m.ok_t is None:
        if m.err is not None:
            return REFUSED
        return CUT_OFF if m.cut_off else NEVER_ACKED
    if not missing(m):
        return COMPLETE
    return UNJUDGED if m.ok_t > end else LOST


@dataclass
class Index:
    """The loaded run with its one-pass index: what every check takes."""

    run: Run
    clock: Clock
    tally: Tally
    deliveries: Deliveries

    @property
    def msgs(self) -> dict[str, Msg]:
        return self.tally.msgs


def build_index(run: Run) -> Index:
    tally = walk(run)
    return Index(run=run, clock=make_clock(run), tally=tally, deliveries=deliver(tally))
