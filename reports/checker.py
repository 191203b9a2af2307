"""The checker: judge what the clients of one run saw and write the run's metrics.json.

It reads only the run folder (manifest and histories, docs/PROTOCOL.md sections 5-6), so a
real run and a simulated run are judged by the same code. What it computes is
docs/PROTOCOL.md section 7, modelled on Jepsen's queue checkers: every acknowledged
message must reach every expected recipient exactly once, and the order in which
recipients saw messages must agree with the server's sequence, with each other,
and with each sender's send order.

Definitions the numbers rest on:
- expected recipients of a message: the conversation's members (the two users of
  a dm; for a group, the union of the manifest's and the history's member lists)
  minus the sender. Self-receipts (a sender's echo) are left out of all delivery
  and ordering accounting.
- a delivery is the first receipt of a message by an expected recipient; later
  receipts of it by that user are duplicates.
- ordering (seq going backwards, members disagreeing, sender FIFO) is judged on
  push deliveries, the live path. Sync is the repair path: messages it recovers
  are counted as gaps filled, not as reorderings, since a catch-up necessarily
  arrives after the pushes that revealed the gap.
- a message acked ok and not delivered to an expected recipient by the end is
  lost, unless its ack itself came after the end (then it is `unjudged`).
  Messages that were not acked ok are never lost; their deliveries are counted
  as `delivered_unacked`.
- a `recv` with no `via` counts as push.
- a send is judged when its fate is known: acked with an error (refused, nothing
  expected), or acked ok before the end (its deliveries are judged). A send never
  acked, or acked ok after the end, is unjudged.
- availability is acked ok / attempted. The verdict (`VERDICTS`) puts it beside the
  anomalies: `clean` only when every send was judged and no anomaly was seen;
  `anomalous` whenever one was; otherwise `unavailable` when fewer than half the
  sends were acked ok, `unknown` when nothing could be judged, and `partial` when
  some sends were judged, none anomalous, and the rest not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from imlab.experiment.history import (
    ACK,
    CONNECT,
    DISCONNECT,
    FAULT,
    GROUP,
    RECV,
    SEND,
    SYNC,
    VIA_SYNC,
    Event,
)
from reports.history import METRICS, Run, load_run
from reports.stats import (
    FloatArray,
    IntArray,
    LatencyStats,
    bucket_percentile,
    count_inversions,
    latency_stats,
)

CHECKER_VERSION = 1
ANOMALY_KINDS = (
    "lost",
    "duplicated",
    "unexpected",
    "seq_backwards",
    "order_disagreements",
    "fifo_violations",
)
VERDICTS = ("clean", "partial", "anomalous", "unavailable", "unknown")
_EXAMPLES = 20
_EMPTY: frozenset[str] = frozenset()


@dataclass(slots=True)
class Msg:
    """What the checker knows about one client_msg_id."""

    idx: int  # position in global send order
    author: str
    conv: str
    t: float
    intended: float
    members: frozenset[str] = _EMPTY
    first_ack_t: float | None = None
    ok_t: float | None = None
    err: str | None = None
    seq: int | None = None
    # recipient -> True if the first receipt came by sync
    recipients: dict[str, bool] | None = None
    last_push: float | None = None


# One delivery in a recipient's stream of one conversation: (message, by sync, seq).
Delivery = tuple[Msg, bool, int | None]


class Fault(TypedDict):
    kind: str | None
    target: str | None
    start: float | None
    end: float | None
    start_rel: float | None
    end_rel: float | None
    source: str


@dataclass
class _Tally:
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
    recvs: list[Event] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


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


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --------------------------------------------------------------------------- pass 1


def _walk(run: Run) -> _Tally:
    """One pass over the sorted history: sends, acks, groups, connections; recvs set aside."""
    tally = _Tally()
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
            intended = _number(e.get("intended"))
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
    return tally


# --------------------------------------------------------------------------- pass 2


@dataclass
class _Deliveries:
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


def _deliver(tally: _Tally) -> _Deliveries:
    """Classify every recv: self, unexpected, duplicate or a first delivery."""
    d = _Deliveries()
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
            if len(d.unexpected_examples) < _EXAMPLES:
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
            if len(d.unexpected_examples) < _EXAMPLES:
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


# --------------------------------------------------------------------------- ordering


def _seq_backwards(stream: list[Delivery]) -> int:
    back = 0
    top: int | None = None
    for _m, by_sync, seq in stream:
        if by_sync or seq is None:
            continue
        if top is not None and seq < top:
            back += 1
        else:
            top = seq
    return back


def _fifo_violations(stream: list[Delivery]) -> int:
    by_author: dict[str, list[int]] = {}
    for m, by_sync, _seq in stream:
        if m.ok_t is not None and not by_sync:
            by_author.setdefault(m.author, []).append(m.idx)
    return sum(count_inversions(order) for order in by_author.values() if len(order) > 1)


def _sync_gaps(stream: list[Delivery], own: list[tuple[int, bool]]) -> int:
    """Maximal runs of sync-recovered messages in the recipient's seq order.

    The recipient's own messages take part in the order (a run through one's own
    message is still one gap) but are not counted as recovered.
    """
    entries = [(seq, by_sync) for _m, by_sync, seq in stream if seq is not None]
    entries.extend(own)
    entries.sort()
    gaps = 0
    prev = False
    for _seq, by_sync in entries:
        if by_sync and not prev:
            gaps += 1
        prev = by_sync
    return gaps


@dataclass
class _Disagreement:
    member_pairs: int = 0
    inverted_pairs: int = 0


def _member_disagreement(orders: list[list[Msg]]) -> _Disagreement:
    """Pairs of members of one conversation who saw common messages in opposite orders.

    Each member's order is ranked against a reference total order (server seq,
    then send order). Members whose order is monotone in it agree with each other
    on every common pair, so only pairs involving a non-monotone member are
    compared, each by counting inversions over their common messages.
    Identical orders are compared once and weighted by their multiplicity.
    """
    result = _Disagreement()
    universe = {m.idx: m for order in orders for m in order}
    ref = sorted(
        universe.values(), key=lambda m: (m.seq is None, m.seq if m.seq is not None else 0, m.idx)
    )
    rank = {m.idx: r for r, m in enumerate(ref)}
    distinct = Counter(tuple(rank[m.idx] for m in order) for order in orders)
    bad = [s for s in distinct if list(s) != sorted(s)]
    if not bad:
        return result
    good = [s for s in distinct if list(s) == sorted(s)]
    ordered = bad + good
    size = len(ref)
    for i, x in enumerate(bad):
        pos = np.full(size, -1, dtype=np.int64)
        pos[np.asarray(x, dtype=np.int64)] = np.arange(len(x), dtype=np.int64)
        for y in ordered[i + 1 :]:
            mapped = pos[np.asarray(y, dtype=np.int64)]
            inv = count_inversions(mapped[mapped >= 0])
            if inv:
                weight = distinct[x] * distinct[y]
                result.member_pairs += weight
                result.inverted_pairs += weight * inv
    return result


def _ordering(d: _Deliveries) -> dict[str, Any]:
    seq_backwards = 0
    fifo = 0
    fifo_triples = 0
    gaps = 0
    by_conv: dict[str, list[list[Msg]]] = {}
    for key, stream in d.streams.items():
        seq_backwards += _seq_backwards(stream)
        f = _fifo_violations(stream)
        fifo += f
        fifo_triples += f > 0
        if any(by_sync for _m, by_sync, _s in stream):
            gaps += _sync_gaps(stream, d.self_seqs.get(key, []))
        if key[1].startswith("group:"):
            pushed = [m for m, by_sync, _s in stream if not by_sync]
            if len(pushed) > 1:
                by_conv.setdefault(key[1], []).append(pushed)
    disagreements: dict[str, dict[str, int]] = {}
    member_pairs = 0
    inverted = 0
    for conv, orders in by_conv.items():
        if len(orders) < 2:
            continue
        res = _member_disagreement(orders)
        if res.member_pairs:
            disagreements[conv] = {
                "member_pairs": res.member_pairs,
                "inverted_message_pairs": res.inverted_pairs,
            }
            member_pairs += res.member_pairs
            inverted += res.inverted_pairs
    return {
        "seq_backwards": seq_backwards,
        "order_disagreements": {
            "member_pairs": member_pairs,
            "inverted_message_pairs": inverted,
            "by_conv": dict(sorted(disagreements.items())),
        },
        "fifo_violations": fifo,
        "fifo_violating_streams": fifo_triples,
        "sync_recovered": d.sync_ok,
        "sync_gaps": gaps,
    }


# --------------------------------------------------------------------------- time


@dataclass
class _Clock:
    t0: float  # series origin and throughput window start: started_at, else the first event
    stop: float  # throughput window end: ended_at, else the last event
    end: float  # judging end: drain_end, else ended_at, else the last event
    last: float  # last moment the series must cover


def _clock(run: Run) -> _Clock:
    man = run.manifest
    first = run.events[0]["t"] if run.events else 0.0
    last_ev = run.events[-1]["t"] if run.events else first
    started = _number(man.get("started_at"))
    ended = _number(man.get("ended_at"))
    drain = _number(man.get("drain_end"))
    t0 = started if started is not None else first
    stop = ended if ended is not None else last_ev
    end = drain if drain is not None else stop
    return _Clock(t0=t0, stop=stop, end=end, last=max(last_ev, end, t0))


def _faults(run: Run, tally: _Tally, t0: float) -> list[Fault]:
    def rel(x: float | None) -> float | None:
        return None if x is None else round(x - t0, 3)

    out: list[Fault] = []
    seen: set[tuple[Any, Any, Any]] = set()
    raw: list[tuple[dict[str, Any], str]] = [
        (f, "manifest") for f in run.manifest.get("faults") or [] if isinstance(f, dict)
    ]
    raw += [(dict(e), "history") for e in tally.fault_events]
    for f, source in raw:
        start = _number(f.get("start"))
        if start is None and source == "history":
            start = _number(f.get("t"))
        end = _number(f.get("end"))
        kind = f.get("kind")
        target = f.get("target")
        ident = (kind, target, start)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(
            Fault(
                kind=None if kind is None else str(kind),
                target=None if target is None else str(target),
                start=start,
                end=end,
                start_rel=rel(start),
                end_rel=rel(end),
                source=source,
            )
        )
    out.sort(key=lambda f: (f["start"] is None, f["start"] or 0.0))
    return out


def _series(
    clock: _Clock,
    counts: dict[str, tuple[Iterable[float], Iterable[float] | None]],
    push_t: FloatArray,
    push_ms: FloatArray,
) -> dict[str, Any]:
    """Per-second series relative to t0; `counts` maps a name to (times, weights or None).

    The buckets run from the earliest time any series holds (or t0) to the latest
    (or the judging end), so every point lands in a bucket.
    """
    arrays: dict[str, tuple[FloatArray, FloatArray | None]] = {}
    lo_t, hi_t = clock.t0, clock.last
    for name, (times, weights) in counts.items():
        arr = (
            np.asarray(times, dtype=np.float64)
            if isinstance(times, np.ndarray | list)
            else np.fromiter(times, dtype=np.float64)
        )
        w = None if weights is None else np.fromiter(weights, dtype=np.float64)
        arrays[name] = (arr, w)
        if arr.size:
            lo_t = min(lo_t, float(arr.min()))
            hi_t = max(hi_t, float(arr.max()))
    lo = math.floor(lo_t - clock.t0)
    hi = math.floor(hi_t - clock.t0)
    n = hi - lo + 1
    out: dict[str, Any] = {"t0": clock.t0, "t": list(range(lo, hi + 1))}
    for name, (arr, w) in arrays.items():
        idx = np.floor(arr - clock.t0).astype(np.int64) - lo
        out[name] = np.bincount(idx, weights=w, minlength=n).astype(np.int64).tolist()
    buckets: IntArray = np.floor(push_t - clock.t0).astype(np.int64) - lo
    out["latency_p50_ms"] = bucket_percentile(push_ms, buckets, n, 500)
    out["latency_p99_ms"] = bucket_percentile(push_ms, buckets, n, 990)
    return out


# --------------------------------------------------------------------------- check


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def compute(run: Run) -> dict[str, Any]:
    """All metrics of a loaded run (what check() writes to metrics.json)."""
    man = run.manifest
    clock = _clock(run)
    tally = _walk(run)
    d = _deliver(tally)
    msgs = tally.msgs

    expected = delivered = lost = unjudged = lost_msgs = unjudged_msgs = 0
    error_undelivered = unacked_undelivered = 0
    acked_ok = never_acked = 0
    errors: Counter[str] = Counter()
    lost_examples: list[dict[str, Any]] = []
    lost_t: list[float] = []
    lost_w: list[float] = []
    fanout: list[float] = []
    ack_lat: list[float] = []
    ack_ok_lat: list[float] = []
    no_members: Counter[str] = Counter()
    for msg, m in msgs.items():
        n_exp = len(m.members) - (m.author in m.members)
        if not m.members:
            no_members[m.conv or "(none)"] += 1
        got = len(m.recipients) if m.recipients else 0
        missing = n_exp - got
        if m.first_ack_t is not None:
            ack_lat.append(m.first_ack_t - m.intended)
        if m.ok_t is not None:
            acked_ok += 1
            ack_ok_lat.append(m.ok_t - m.intended)
            expected += n_exp
            delivered += got
            if m.last_push is not None:
                fanout.append(m.last_push - m.intended)
            if missing and m.ok_t > clock.end:
                unjudged += missing
                unjudged_msgs += 1
            elif missing:
                lost += missing
                lost_msgs += 1
                lost_t.append(m.intended)
                lost_w.append(missing)
                if len(lost_examples) < _EXAMPLES:
                    rec = m.recipients or {}
                    lost_examples.append(
                        {
                            "msg": msg,
                            "conv": m.conv,
                            "sender": m.author,
                            "intended": m.intended,
                            "missing": sorted(
                                u for u in m.members if u != m.author and u not in rec
                            ),
                        }
                    )
        elif m.err is not None:
            errors[m.err] += 1
            error_undelivered += missing
        else:
            never_acked += 1
            unacked_undelivered += missing

    ordering = _ordering(d)
    push_ms = np.asarray(d.push_lat, dtype=np.float64) * 1000.0
    push_t = np.asarray(d.push_t, dtype=np.float64)
    latency: dict[str, LatencyStats] = {
        "push": latency_stats(push_ms),
        "fanout": latency_stats(np.asarray(fanout, dtype=np.float64) * 1000.0),
        "sync_recovery": latency_stats(np.asarray(d.sync_lat, dtype=np.float64) * 1000.0),
        "ack": latency_stats(np.asarray(ack_lat, dtype=np.float64) * 1000.0),
        "ack_ok": latency_stats(np.asarray(ack_ok_lat, dtype=np.float64) * 1000.0),
    }

    unexpected = d.unexpected_unknown + d.unexpected_not_recipient
    deliveries_ok = d.push_ok + d.sync_ok
    window = max(clock.stop - clock.t0, 0.0)
    ms = msgs.values()
    series = _series(
        clock,
        {
            "sends": ((m.t for m in ms), None),
            "acked_ok": ((m.ok_t for m in ms if m.ok_t is not None), None),
            "acked_error": (
                (m.first_ack_t for m in ms if m.ok_t is None and m.first_ack_t is not None),
                None,
            ),
            "deliveries_push": (push_t, None),
            "deliveries_sync": (d.sync_t, None),
            "lost": (lost_t, lost_w),
            "connects": (tally.connects, None),
            "disconnects": (tally.disconnects, None),
            "syncs": (tally.syncs, None),
        },
        push_t,
        push_ms,
    )

    warnings: list[str] = []
    if run.malformed_lines:
        warnings.append(f"{run.malformed_lines} malformed history lines skipped")
    if tally.acks_without_send:
        warnings.append(f"{tally.acks_without_send} acks for messages with no send event")
    for conv, n in sorted(no_members.items()):
        warnings.append(f"{n} sends to {conv}, whose members are unknown: nobody is expected")
    if not run.files:
        warnings.append("no history*.jsonl files")

    anomalies = {
        "lost": lost,
        "duplicated": d.duplicated,
        "unexpected": unexpected,
        "seq_backwards": ordering["seq_backwards"],
        "order_disagreements": ordering["order_disagreements"]["inverted_message_pairs"],
        "fifo_violations": ordering["fifo_violations"],
    }
    attempted = len(msgs)
    acked_error = sum(errors.values())
    judged = attempted - never_acked - unjudged_msgs
    availability = {
        "attempted": attempted,
        "acked_ok": acked_ok,
        "ok_ratio": _ratio(acked_ok, attempted),
        "never_acked": never_acked,
        "never_acked_ratio": _ratio(never_acked, attempted),
        "judged_sends": judged,
        "unjudged_sends": attempted - judged,
    }
    verdict, why = _verdict(availability, anomalies)
    metrics: dict[str, Any] = {
        "checker": {
            "version": CHECKER_VERSION,
            "events": len(run.events),
            "files": run.files,
            "malformed_lines": run.malformed_lines,
            "warnings": warnings,
        },
        "run": {
            "stage": man.get("stage"),
            "scenario": man.get("scenario"),
            "params": man.get("params"),
            "started_at": man.get("started_at"),
            "ended_at": man.get("ended_at"),
            "drain_end": man.get("drain_end"),
            "judged_until": clock.end,
            "machine": man.get("machine"),
            "versions": man.get("versions"),
        },
        "sends": {
            "attempted": attempted,
            "acked_ok": acked_ok,
            "acked_error": acked_error,
            "acked_error_by_code": dict(sorted(errors.items())),
            "never_acked": never_acked,
            "retried": tally.retried,
            "acks_without_send": tally.acks_without_send,
        },
        "deliveries": {
            "expected": expected,
            "delivered": delivered,
            "push": d.push_ok,
            "sync": d.sync_ok,
            "lost": lost,
            "lost_messages": lost_msgs,
            "unjudged": unjudged,
            "duplicated": d.duplicated,
            "duplicated_pairs": len(d.duplicated_pairs),
            "unexpected": unexpected,
            "unexpected_never_sent": d.unexpected_unknown,
            "unexpected_not_recipient": d.unexpected_not_recipient,
            "delivered_unacked": d.unacked_by_error + d.unacked_by_never,
            "delivered_unacked_by": {
                "acked_error": d.unacked_by_error,
                "never_acked": d.unacked_by_never,
            },
            "error_undelivered": error_undelivered,
            "unacked_undelivered": unacked_undelivered,
            "self_receipts": d.self_receipts,
            "lost_examples": lost_examples,
            "unexpected_examples": d.unexpected_examples,
        },
        "latency_ms": latency,
        "ordering": ordering,
        "throughput": {
            "window_s": round(window, 3),
            "accepted_sends_per_s": _ratio(acked_ok, window),
            "deliveries_per_s": _ratio(deliveries_ok, window),
        },
        "connections": {
            "connects": len(tally.connects),
            "connect_failed": tally.connect_failed,
            "disconnects": len(tally.disconnects),
            "syncs": len(tally.syncs),
        },
        "faults": _faults(run, tally, clock.t0),
        "series": series,
        "anomalies": anomalies,
        "availability": availability,
        "verdict": {"verdict": verdict, "why": why},
    }
    metrics["summary"] = {
        "stage": man.get("stage"),
        "scenario": man.get("scenario"),
        "events": len(run.events),
        "sends_attempted": attempted,
        "acked_ok": acked_ok,
        "acked_error": acked_error,
        "never_acked": never_acked,
        "ack_ok_ratio": _ratio(acked_ok, attempted),
        "expected_deliveries": expected,
        "delivered": delivered,
        "delivery_ratio": _ratio(delivered, expected),
        "push_p50_ms": latency["push"]["p50"],
        "push_p99_ms": latency["push"]["p99"],
        "push_p99_9_ms": latency["push"]["p99_9"],
        "fanout_p99_ms": latency["fanout"]["p99"],
        "sync_recovery_p50_ms": latency["sync_recovery"]["p50"],
        "accepted_sends_per_s": metrics["throughput"]["accepted_sends_per_s"],
        "deliveries_per_s": metrics["throughput"]["deliveries_per_s"],
        "anomalies": sum(anomalies.values()),
        "judged_sends": judged,
        "verdict": verdict,
        "clean": verdict == "clean",
    }
    return metrics


def _verdict(availability: dict[str, Any], anomalies: dict[str, int]) -> tuple[str, str]:
    """One of VERDICTS and the reason for it, in words."""
    attempted = availability["attempted"]
    ok = availability["acked_ok"]
    never = availability["never_acked"]
    judged = availability["judged_sends"]
    found = {k: v for k, v in anomalies.items() if v}
    if found:
        kinds = ", ".join(f"{k} {v:,}" for k, v in found.items())
        n = sum(found.values())
        return "anomalous", f"{n:,} {'anomaly' if n == 1 else 'anomalies'} ({kinds})"
    if not attempted:
        return "unknown", "no sends to judge"
    if ok * 2 < attempted:
        return "unavailable", (
            f"only {ok:,} of {attempted:,} sends acked ok ({never:,} never acked); "
            "no anomalies among the rest"
        )
    if not judged:
        return "unknown", f"none of {attempted:,} sends could be judged"
    if judged < attempted:
        return "partial", (
            f"no anomalies among {judged:,} judged sends; {attempted - judged:,} unjudged "
            f"({never:,} never acked, {attempted - judged - never:,} acked after the end)"
        )
    return "clean", f"all {attempted:,} sends judged, no anomalies"


def verdict_text(metrics: dict[str, Any]) -> str:
    """`verdict: why`, also for a metrics.json older than the verdict (clean or anomalous)."""
    v = metrics.get("verdict")
    if isinstance(v, dict):
        return f"{v.get('verdict')}: {v.get('why')}"
    return "clean" if metrics.get("summary", {}).get("clean") else "anomalous"


def push_latencies(run: Run) -> list[float]:
    """Every push latency (intended send -> first push receipt by an expected recipient),
    in seconds: exactly the sample behind `latency_ms.push` in metrics.json."""
    return list(_deliver(_walk(run)).push_lat)


def check(run_dir: Path) -> dict[str, Any]:
    """Judge the run folder, write its metrics.json and return the metrics."""
    run_dir = Path(run_dir)
    began = time.perf_counter()
    metrics = compute(load_run(run_dir))
    metrics["checker"]["elapsed_s"] = round(time.perf_counter() - began, 3)
    tmp = run_dir / (METRICS + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(run_dir / METRICS)
    return metrics


# --------------------------------------------------------------------------- table


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def summary_table(metrics: dict[str, Any]) -> str:
    """The headline numbers and anomaly counts as an aligned two-column text table."""
    s = metrics["summary"]
    lat = metrics["latency_ms"]
    dl = metrics["deliveries"]
    rows: list[tuple[str, str]] = [
        ("stage / scenario", f"{_fmt(s['stage'])} / {_fmt(s['scenario'])}"),
        ("events", _fmt(s["events"])),
        (
            "sends",
            f"{_fmt(s['sends_attempted'])} attempted, {_fmt(s['acked_ok'])} ok, "
            f"{_fmt(s['acked_error'])} error, {_fmt(s['never_acked'])} never acked",
        ),
        (
            "deliveries",
            f"{_fmt(s['delivered'])} of {_fmt(s['expected_deliveries'])} expected "
            f"(push {_fmt(dl['push'])}, sync {_fmt(dl['sync'])})",
        ),
        (
            "push latency ms",
            f"p50 {_fmt(lat['push']['p50'])}  p99 {_fmt(lat['push']['p99'])}  "
            f"p99.9 {_fmt(lat['push']['p99_9'])}  max {_fmt(lat['push']['max'])}",
        ),
        ("fan-out ms", f"p50 {_fmt(lat['fanout']['p50'])}  p99 {_fmt(lat['fanout']['p99'])}"),
        (
            "sync recovery ms",
            f"p50 {_fmt(lat['sync_recovery']['p50'])}  p99 {_fmt(lat['sync_recovery']['p99'])}",
        ),
        (
            "throughput /s",
            f"sends {_fmt(s['accepted_sends_per_s'])}  deliveries {_fmt(s['deliveries_per_s'])}",
        ),
    ]
    ratio = s["ack_ok_ratio"]
    rows.append(
        (
            "availability",
            f"{'-' if ratio is None else f'{ratio:.1%}'} acked ok "
            f"({_fmt(s['acked_ok'])} of {_fmt(s['sends_attempted'])}), "
            f"{_fmt(s['never_acked'])} never acked",
        )
    )
    rows += [(f"anomaly: {k}", _fmt(v)) for k, v in metrics["anomalies"].items()]
    rows.append(("verdict", verdict_text(metrics)))
    rows.append(("clean", _fmt(s["clean"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports.checker",
        description="Judge a run folder's histories and write its metrics.json.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)
    for i, run_dir in enumerate(args.run_dirs):
        metrics = check(run_dir)
        if i:
            print()
        print(run_dir)
        print(summary_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
