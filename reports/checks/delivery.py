"""Delivery: every message acked ok reaches every expected recipient by the judging end.

A message acked ok and not delivered to an expected recipient by the end is lost, unless
its ack itself came after the end (then it is `unjudged`). Messages that were not acked
ok are never lost; their deliveries are counted as `delivered_unacked`. Deliveries are
split by path: push (the live path) and sync (the repair path).

Revoked users (`token-revoke`, a `revoked` history event at T): the decision is that a
revoked user is not expected to receive any message whose send was acked at or after
T - 2 s (`REVOKE_GRACE`; earlier messages were delivered long before T in every measured
run); those recipients are counted as `excused_revoked`, not lost, and a delivery to
one still counts as delivered. Its own sends from T - 2 s on that were never acked
(its connection closed, its reconnect refused `unauthorized`) are `cut_off`: judged,
nothing expected of them, not anomalies; those acked with an error (`unauthorized`)
are refused as any other. Deliveries to it of messages acked before T - 2 s are
expected as usual. So a stage that honours revocations loses nothing under the fault.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from reports.checks.base import Check, Result, judged
from reports.checks.index import (
    COMPLETE,
    CUT_OFF,
    EXAMPLES,
    LOST,
    NEVER_ACKED,
    REFUSED,
    UNJUDGED,
    Index,
    excused_missing,
    expected_count,
    fate,
    missing,
    missing_users,
)


def delivery(index: Index) -> Result:
    tally, d = index.tally, index.deliveries
    expected = delivered = lost = unjudged = lost_msgs = 0
    error_undelivered = unacked_undelivered = 0
    acked_ok = never_acked = cut_off = excused = 0
    errors: Counter[str] = Counter()
    lost_examples: list[dict[str, Any]] = []
    no_members: Counter[str] = Counter()
    for msg, m in index.msgs.items():
        if not m.members:
            no_members[m.conv or "(none)"] += 1
        gone = missing(m)
        f = fate(m, index.clock.end)
        if f in (COMPLETE, LOST, UNJUDGED):
            acked_ok += 1
            expected += expected_count(m)
            delivered += len(m.recipients) if m.recipients else 0
            excused += excused_missing(m)
        if f == UNJUDGED:
            unjudged += gone
        elif f == LOST:
            lost += gone
            lost_msgs += 1
            if len(lost_examples) < EXAMPLES:
                lost_examples.append(
                    {
                        "msg": msg,
                        "conv": m.conv,
                        "sender": m.author,
                        "intended": m.intended,
                        "missing": missing_users(m),
                    }
                )
        elif f == REFUSED:
            errors[str(m.err)] += 1
            error_undelivered += gone
        elif f == NEVER_ACKED:
            never_acked += 1
            unacked_undelivered += gone
        elif f == CUT_OFF:
            cut_off += 1

    warnings: list[str] = []
    if tally.acks_without_send:
        warnings.append(f"{tally.acks_without_send} acks for messages with no send event")
    for conv, n in sorted(no_members.items()):
        warnings.append(f"{n} sends to {conv}, whose members are unknown: nobody is expected")
    sends = {
        "attempted": len(index.msgs),
        "acked_ok": acked_ok,
        "acked_error": sum(errors.values()),
        "acked_error_by_code": dict(sorted(errors.items())),
        "never_acked": never_acked,
        "cut_off_by_revocation": cut_off,
        "retried": tally.retried,
        "acks_without_send": tally.acks_without_send,
    }
    deliveries = {
        "expected": expected,
        "delivered": delivered,
        "push": d.push_ok,
        "sync": d.sync_ok,
        "lost": lost,
        "lost_messages": lost_msgs,
        "unjudged": unjudged,
        "excused_revoked": excused,
        "revoked_users": sorted(index.tally.revoked),
        "delivered_unacked": d.unacked_by_error + d.unacked_by_never,
        "delivered_unacked_by": {
            "acked_error": d.unacked_by_error,
            "never_acked": d.unacked_by_never,
        },
        "error_undelivered": error_undelivered,
        "unacked_undelivered": unacked_undelivered,
        "self_receipts": d.self_receipts,
        "lost_examples": lost_examples,
    }
    sections = {"sends": sends, "deliveries": deliveries}
    return judged(sections, {"lost": lost}, warnings=warnings)


DELIVERY = Check("delivery", ("sends", "deliveries"), ("lost",), delivery)
