"""The headline numbers of a metrics.json as an aligned two-column text table."""

from __future__ import annotations

from typing import Any

from reports.checks.base import lookup
from reports.checks.verdict import verdict_text


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
    """The headline numbers and anomaly counts; `-` where a figure is missing."""

    def f(*path: str) -> str:
        return _fmt(lookup(metrics, *path))

    def s(key: str) -> str:
        return f("summary", key)

    def lat(kind: str, *stats: tuple[str, str]) -> str:
        return "  ".join(f"{name} {f('latency_ms', kind, key)}" for name, key in stats)

    p50, p99 = ("p50", "p50"), ("p99", "p99")
    # token-revoke: the revoked users' cut-off sends and excused deliveries (else nothing)
    cut = lookup(metrics, "sends", "cut_off_by_revocation")
    cut_text = f", {cut} cut off by revocation" if cut else ""
    excused = lookup(metrics, "deliveries", "excused_revoked")
    excused_text = f", {excused} excused (revoked)" if excused else ""
    rows: list[tuple[str, str]] = [
        ("stage / scenario", f"{s('stage')} / {s('scenario')}"),
        ("events", s("events")),
        (
            "sends",
            f"{s('sends_attempted')} attempted, {s('acked_ok')} ok, "
            f"{s('acked_error')} error, {s('never_acked')} never acked{cut_text}",
        ),
        (
            "deliveries",
            f"{s('delivered')} of {s('expected_deliveries')} expected "
            f"(push {f('deliveries', 'push')}, sync {f('deliveries', 'sync')}){excused_text}",
        ),
        ("push latency ms", lat("push", p50, p99, ("p99.9", "p99_9"), ("max", "max"))),
        ("fan-out ms", lat("fanout", p50, p99)),
        ("sync recovery ms", lat("sync_recovery", p50, p99)),
        (
            "throughput /s",
            f"sends {s('accepted_sends_per_s')}  deliveries {s('deliveries_per_s')}",
        ),
    ]
    ratio = lookup(metrics, "summary", "ack_ok_ratio")
    rows.append(
        (
            "availability",
            f"{'-' if ratio is None else f'{ratio:.1%}'} acked ok "
            f"({s('acked_ok')} of {s('sends_attempted')}), {s('never_acked')} never acked",
        )
    )
    rows += [(f"anomaly: {k}", _fmt(v)) for k, v in metrics["anomalies"].items()]
    rows.append(("verdict", verdict_text(metrics)))
    rows.append(("clean", s("clean")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
