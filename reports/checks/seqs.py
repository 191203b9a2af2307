"""Sequence numbers: a (conversation, seq) names one message, for good.

Two different messages (by `msg`, the client_msg_id) with the same seq in one
conversation are a seq reused: the server handed the number out twice (v4 does after
its Redis comes back empty, the OpenIM 3249 case), and a client's `x < y` catch-up
then skips one of them or shows one in the other's place. Seen from the acks (what
senders were told) and from every recv (what any client was shown, push or sync).
A retried send (the same msg acked twice) is one message, never a reuse.
"""

from __future__ import annotations

from typing import Any

from imlab.experiment.history import ACK, RECV
from reports.checks.base import Check, Result, judged
from reports.checks.index import EXAMPLES, Index


def _seq(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def seqs(index: Index) -> Result:
    msgs = index.msgs
    # (conv, seq) -> msg -> where it was seen: "ack" and/or "recv"
    owners: dict[tuple[str, int], dict[str, set[str]]] = {}
    for e in index.run.events:
        ev = e["ev"]
        if ev == ACK:
            if e.get("ok") is not True:
                continue
            source = "ack"
        elif ev == RECV:
            source = "recv"
        else:
            continue
        seq = _seq(e.get("seq"))
        msg = e.get("msg")
        if seq is None or not isinstance(msg, str) or not msg:
            continue
        m = msgs.get(msg)
        conv = e.get("conv") or (m.conv if m is not None else "")
        if not isinstance(conv, str) or not conv:
            continue
        owners.setdefault((conv, seq), {}).setdefault(msg, set()).add(source)
    reused = 0
    by_acks = 0
    examples: list[dict[str, Any]] = []
    convs: set[str] = set()
    for (conv, seq), holders in sorted(owners.items()):
        if len(holders) < 2:
            continue
        reused += len(holders) - 1
        acked = sum(1 for where in holders.values() if "ack" in where)
        by_acks += max(0, acked - 1)
        convs.add(conv)
        if len(examples) < EXAMPLES:
            examples.append(
                {
                    "conv": conv,
                    "seq": seq,
                    "msgs": {k: sorted(v) for k, v in sorted(holders.items())},
                }
            )
    figures = {
        "seqs_seen": len(owners),
        "seq_reused": reused,
        "seq_reused_in_acks": by_acks,
        "seq_reused_convs": len(convs),
        "seq_reused_examples": examples,
    }
    return judged({"seqs": figures}, {"seq_reused": reused})


SEQS = Check("seqs", ("seqs",), ("seq_reused",), seqs)
