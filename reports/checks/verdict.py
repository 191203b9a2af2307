"""Availability and the verdict: how many sends were acked ok and judged, and the one word
that sums up a run.

Availability is acked ok / attempted. A send is judged when its fate is known: acked
with an error (refused, nothing expected), never acked because its sender had been
revoked (`cut_off`, nothing expected: reports/checks/delivery.py), or acked ok before
the end (its deliveries are judged). A send never acked, or acked ok after the end, is unjudged.

The verdict (`VERDICTS`) puts availability beside the anomalies of every check:
`clean` only when every send was judged and no anomaly was seen; `anomalous` whenever
one was; otherwise `unknown` when a check crashed, `unavailable` when fewer than half
the sends were acked ok, `unknown` when nothing could be judged, and `partial` when
some sends were judged, none anomalous, and the rest not.
"""

from __future__ import annotations

from typing import Any

from reports.checks.base import Check, Result, ratio
from reports.checks.index import CUT_OFF, NEVER_ACKED, UNJUDGED, Index, fate

VERDICTS = ("clean", "partial", "anomalous", "unavailable", "unknown")


def _availability_verdict(a: dict[str, Any]) -> tuple[str, str]:
    attempted, ok, never, judged = (
        a["attempted"],
        a["acked_ok"],
        a["never_acked"],
        a["judged_sends"],
    )
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


def availability(index: Index) -> Result:
    fates = [fate(m, index.clock.end) for m in index.msgs.values()]
    attempted = len(fates)
    acked_ok = sum(1 for m in index.msgs.values() if m.ok_t is not None)
    never_acked = fates.count(NEVER_ACKED)
    judged = attempted - never_acked - fates.count(UNJUDGED)
    figures = {
        "attempted": attempted,
        "acked_ok": acked_ok,
        "ok_ratio": ratio(acked_ok, attempted),
        "never_acked": never_acked,
        "never_acked_ratio": ratio(never_acked, attempted),
        "cut_off_by_revocation": fates.count(CUT_OFF),
        "judged_sends": judged,
        "unjudged_sends": attempted - judged,
    }
    verdict, why = _availability_verdict(figures)
    return Result(verdict, why, {"availability": figures})


AVAILABILITY = Check("availability", ("availability",), (), availability)


def overall(anomalies: dict[str, int | None], results: dict[str, Result]) -> tuple[str, str]:
    """One of VERDICTS for the whole run and the reason for it, in words."""
    found = {k: v for k, v in anomalies.items() if v}
    if found:
        kinds = ", ".join(f"{k} {v:,}" for k, v in found.items())
        n = sum(found.values())
        return "anomalous", f"{n:,} {'anomaly' if n == 1 else 'anomalies'} ({kinds})"
    crashed: dict[str, list[str]] = {}
    for name, r in results.items():
        if r.error is not None:
            crashed.setdefault(r.error, []).append(name)
    if crashed:
        return "unknown", "check crashed: " + "; ".join(
            f"{', '.join(names)} ({error})" for error, names in crashed.items()
        )
    a = results.get(AVAILABILITY.name)
    if a is None:
        return "unknown", "availability was not checked"
    return a.verdict, a.why


def verdict_text(metrics: dict[str, Any]) -> str:
    """`verdict: why`, also for a metrics.json older than the verdict (clean or anomalous)."""
    v = metrics.get("verdict")
    if isinstance(v, dict):
        return f"{v.get('verdict')}: {v.get('why')}"
    return "clean" if metrics.get("summary", {}).get("clean") else "anomalous"
