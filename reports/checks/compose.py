"""Compose the checks into one metrics.json: run every check on the shared index, lay
their figures out by section, and sum up the run in a verdict and a summary.

A check that raises does not stop the others: each section it fills reads
`{"verdict": "unknown", "error": ...}` and its anomaly counts read None, and the run's
verdict is `unknown` unless another check found an anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reports.checks.base import ANOMALY_KINDS, Check, Result, lookup, ratio
from reports.checks.delivery import DELIVERY
from reports.checks.duplicates import DUPLICATES
from reports.checks.faults import FAULTS
from reports.checks.index import Index, build_index
from reports.checks.latency import LATENCY
from reports.checks.ordering import ORDERING
from reports.checks.seqs import SEQS
from reports.checks.series import SERIES
from reports.checks.verdict import AVAILABILITY, overall
from reports.history import Run

CHECKER_VERSION = 1
CHECKS: tuple[Check, ...] = (
    DELIVERY,
    DUPLICATES,
    ORDERING,
    SEQS,
    LATENCY,
    SERIES,
    FAULTS,
    AVAILABILITY,
)
# The order of metrics.json's sections.
LAYOUT = (
    "checker",
    "run",
    "sends",
    "deliveries",
    "latency_ms",
    "ordering",
    "seqs",
    "throughput",
    "connections",
    "faults",
    "series",
    "anomalies",
    "availability",
    "verdict",
    "summary",
)


def run_safe(check: Check, index: Index | Exception) -> Result:
    """The check's result, or an `unknown` one holding what it raised."""
    try:
        if isinstance(index, Exception):
            raise index
        return check.run(index)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        unknown = {"verdict": "unknown", "error": f"check {check.name} raised {error}"}
        return Result(
            "unknown",
            error,
            {s: dict(unknown) for s in check.sections},
            dict.fromkeys(check.anomaly_kinds),
            error=error,
        )


def compose(run: Run, checks: Sequence[Check] = CHECKS) -> dict[str, Any]:
    """All metrics of a loaded run (what check() writes to metrics.json)."""
    index: Index | Exception
    try:
        index = build_index(run)
    except Exception as e:
        index = e
    results = {c.name: run_safe(c, index) for c in checks}
    metrics: dict[str, Any] = {"checker": _checker(run, results), "run": _run(run, index)}
    for result in results.values():
        for section, figures in result.sections.items():
            if isinstance(metrics.get(section), dict):
                metrics[section].update(figures)
            else:
                metrics[section] = figures
    found = {k: v for r in results.values() for k, v in r.anomalies.items()}
    anomalies = {k: found[k] for k in ANOMALY_KINDS if k in found}
    metrics["anomalies"] = anomalies
    verdict, why = overall(anomalies, results)
    metrics["verdict"] = {"verdict": verdict, "why": why}
    ordered = {k: metrics[k] for k in LAYOUT if k in metrics}
    ordered.update(metrics)  # a section LAYOUT does not name goes last
    ordered["summary"] = _summary(ordered, len(run.events))
    return ordered


def _checker(run: Run, results: dict[str, Result]) -> dict[str, Any]:
    warnings: list[str] = []
    if run.malformed_lines:
        warnings.append(f"{run.malformed_lines} malformed history lines skipped")
    warnings += [w for r in results.values() for w in r.warnings]
    if not run.files:
        warnings.append("no history*.jsonl files")
    return {
        "version": CHECKER_VERSION,
        "events": len(run.events),
        "files": run.files,
        "malformed_lines": run.malformed_lines,
        "warnings": warnings,
    }


def _run(run: Run, index: Index | Exception) -> dict[str, Any]:
    man = run.manifest
    return {
        "stage": man.get("stage"),
        "scenario": man.get("scenario"),
        "params": man.get("params"),
        "started_at": man.get("started_at"),
        "ended_at": man.get("ended_at"),
        "drain_end": man.get("drain_end"),
        "judged_until": None if isinstance(index, Exception) else index.clock.end,
        "machine": man.get("machine"),
        "versions": man.get("versions"),
    }


def _summary(metrics: dict[str, Any], events: int) -> dict[str, Any]:
    def get(*path: str) -> Any:
        return lookup(metrics, *path)

    attempted, acked_ok = get("sends", "attempted"), get("sends", "acked_ok")
    expected, delivered = get("deliveries", "expected"), get("deliveries", "delivered")
    verdict = metrics["verdict"]["verdict"]
    return {
        "stage": get("run", "stage"),
        "scenario": get("run", "scenario"),
        "events": events,
        "sends_attempted": attempted,
        "acked_ok": acked_ok,
        "acked_error": get("sends", "acked_error"),
        "never_acked": get("sends", "never_acked"),
        "ack_ok_ratio": None if attempted is None else ratio(acked_ok, attempted),
        "expected_deliveries": expected,
        "delivered": delivered,
        "delivery_ratio": None if expected is None else ratio(delivered, expected),
        "push_p50_ms": get("latency_ms", "push", "p50"),
        "push_p99_ms": get("latency_ms", "push", "p99"),
        "push_p99_9_ms": get("latency_ms", "push", "p99_9"),
        "fanout_p99_ms": get("latency_ms", "fanout", "p99"),
        "sync_recovery_p50_ms": get("latency_ms", "sync_recovery", "p50"),
        "accepted_sends_per_s": get("throughput", "accepted_sends_per_s"),
        "deliveries_per_s": get("throughput", "deliveries_per_s"),
        "anomalies": sum(v for v in metrics["anomalies"].values() if v),
        "judged_sends": get("availability", "judged_sends"),
        "verdict": verdict,
        "clean": verdict == "clean",
    }
