"""Ordering: recipients see messages in the server's sequence, in the same order as each
other, and in each sender's send order.

Ordering (seq going backwards, members disagreeing, sender FIFO) is judged on push
deliveries, the live path. Sync is the repair path: messages it recovers are counted as
gaps filled, not as reorderings, since a catch-up necessarily arrives after the pushes
that revealed the gap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from reports.checks.base import Check, Result, judged
from reports.checks.index import Delivery, Index, Msg
from reports.stats import count_inversions


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


def ordering(index: Index) -> Result:
    d = index.deliveries
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
    figures = {
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
    anomalies = {
        "seq_backwards": seq_backwards,
        "order_disagreements": inverted,
        "fifo_violations": fifo,
    }
    return judged({"ordering": figures}, anomalies)


ORDERING = Check(
    "ordering", ("ordering",), ("seq_backwards", "order_disagreements", "fifo_violations"), ordering
)
