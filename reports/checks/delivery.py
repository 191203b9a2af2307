"""Delivery: every message acked ok reaches every expected recipient by the judging end.

A message acked ok and not delivered to an expected recipient by the end is lost, unless
its ack itself came after the end (then it is `unjudged`). Messages that were not acked
ok are never lost; their deliveries are counted as `delivered_unacked`. Deliveries are
split by path: push (the live path) and sync (the repair path).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from reports.checks.base import Check, Result, judged
from reports.checks.index import (
    COMPLETE,
    EXAMPLES,
    LOST,
    NEVER_ACKED,
    REFUSED,
    UNJUDGED,
    Index,
    fate,
    missing,
)


def delivery(index: Index) -> Result:
    tally, d = index.tally, index.deliveries
    expected = delivered = lost = unjudged = lost_msgs = 0
    error_undelivered = unacked_undelivered = 0
    acked_ok = never_acked = 0
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
            expected += len(m.members) - (m.author in m.members)
            delivered += len(m.recipients) if m.recipients else 0
        if f == UNJUDGED:
            unjudged += gone
        elif f == LOST:
            lost += gone
            lost_msgs += 1
            if len(lost_examples) < EXAMPLES:
                rec = m.recipients or {}
                lost_examples.append(
                    {
                        "msg": msg,
                        "conv": m.conv,
                        "sender": m.author,
                        "intended": m.intended,
                        "missing": sorted(u for u in m.members if u != m.author and u not in rec),
                    }
                )
        elif f == REFUSED:
            errors[str(m.err)] += 1
            error_undelivered += gone
        elif f == NEVER_ACKED:
            never_acked += 1
            unacked_undelivered += gone

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
