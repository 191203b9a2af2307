"""What only a simulation knows, for `metrics.json["sim"]["population"]`: the model's
exact counts over every user (not only the traced conversations the checker judges),
population latency percentiles, per-process utilisation, and their summary table."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.engine import FifoServer
from sim.ledger import OK
from sim.sample import LoadedServer, kind_of
from sim.stage import StageModel

__all__ = [
    "SAMPLED_NOTE",
    "BusyWindow",
    "population_figures",
    "population_table",
    "resource_classes",
]


SAMPLED_NOTE = (
    "Everything the checker computed (sends, deliveries, latency_ms, ordering, throughput, "
    "series, anomalies, summary) covers the traced conversations only (sim.trace); it is "
    "exact for them. sim.population covers every user: counts are exact, latency "
    "percentiles come from 1%-wide histogram buckets, and its push/sync counts and "
    "latencies take every receipt by an expected recipient, while the checker's leave "
    "out messages that were never acked ok (population `delivered` and `lost` do "
    "follow the checker's definitions)."
)


def population_figures(model: StageModel, busy: BusyWindow | None = None) -> dict[str, Any]:
    """The model's own exact counts over every user (not only the traced ones); the
    resource classes' utilisations over the send window when `busy` watched it."""
    led = model.ledger
    c = model.counts
    status = np.frombuffer(bytes(led.status), dtype=np.uint8)
    expected = np.frombuffer(led.expected, dtype=np.uint16).astype(np.int64)
    got = np.frombuffer(led.got, dtype=np.uint16).astype(np.int64)
    ok = status == OK
    missing = np.clip(expected - got, 0, None)
    lost = int(missing[ok].sum())
    n_ok = int(ok.sum())
    exp_ok = int(expected[ok].sum())
    delivered_ok = int(np.minimum(got, expected)[ok].sum())
    window = model.send_end - model.send_start
    return {
        "users": len(model.users),
        "of_users": model.population,
        "scale": model.scale,
        "sends": {
            "attempted": len(led),
            "acked_ok": n_ok,
            "acked_error": int((status == 2).sum()),
            "acked_error_by_code": dict(sorted(c.errors.items())),
            "never_acked": int((status == 0).sum()),
            "skipped_offline": c.c.get("skipped_offline", 0),
        },
        "deliveries": {
            "expected": exp_ok,
            "delivered": delivered_ok,
            "push": c.c.get("deliveries_push", 0),
            "sync": c.c.get("deliveries_sync", 0),
            "lost": lost,
            "lost_messages": int((missing[ok] > 0).sum()),
            "delivered_unacked": int(got[~ok].sum()),
            "acked_never_pushed": int(
                (ok & (np.frombuffer(bytes(led.pushed), dtype=np.uint8) == 0)).sum()
            ),
            "self_receipts": c.c.get("self_receipts", 0),
            "pushes_into_dead_connections": c.c.get("pushes_into_dead_connections", 0),
        },
        "latency_ms": {
            "push": c.push_latency.summary_ms(),
            "sync_recovery": c.sync_latency.summary_ms(),
            "ack": c.ack_latency.summary_ms(),
        },
        "throughput": {
            "accepted_sends_per_s": round(n_ok / window, 3) if window else None,
            "deliveries_per_s": round(
                (c.c.get("deliveries_push", 0) + c.c.get("deliveries_sync", 0)) / window, 3
            )
            if window
            else None,
        },
        "clients": {
            k: c.c.get(k, 0)
            for k in (
                "connects",
                "connect_failed",
                "drops",
                "silent_drops",
                "returns",
                "syncs",
                "final_synced",
                "inbox_duplicates",
                "crashes",
                "record_retries",
                "route_errors",
                "redis_pool_exhausted",
                "relay_no_listener",
                "kafka_duplicates",
            )
        },
        "servers": {
            n.name: {
                "jobs": n.cpu.jobs,
                "utilisation": round(n.cpu.busy / max(model.env.now, 1e-9), 4),
                **_background(n.cpu),
            }
            for n in (*model.nodes, *model.workers, *model.loadgens_as_nodes())
        }
        | {
            name: {
                "jobs": server.jobs,
                "utilisation": round(server.busy / max(model.env.now, 1e-9), 4),
                **_background(server),
            }
            for name, server in model.services().items()
        },
        "classes": resource_classes(model, busy),
        "classes_over": "send window" if busy is not None and busy.utilisations() else "run",
        "kafka": model.kafka_figures(),
        "series": {"t0_offset_s": 0, **{k: v for k, v in c.series.items()}},
    }


def _servers(model: StageModel) -> list[FifoServer]:
    return [n.cpu for n in (*model.nodes, *model.workers)] + list(model.services().values())


class BusyWindow:
    """The busy time of every process and service at the first and the last progress
    call inside the send window, for utilisations over the window only (no connect
    phase, no drain): call it from the model's progress hook."""

    def __init__(self) -> None:
        self.first: tuple[float, list[float]] | None = None
        self.last: tuple[float, list[float]] | None = None

    def __call__(self, model: StageModel) -> None:
        now = model.env.now
        if not model.send_start <= now <= model.send_end:
            return
        busy = [s.busy for s in _servers(model)]
        if self.first is None:
            self.first = (now, busy)
        else:
            self.last = (now, busy)

    def utilisations(self) -> list[float] | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        (t0, b0), (t1, b1) = self.first, self.last
        return [(b - a) / (t1 - t0) for a, b in zip(b0, b1, strict=True)]


def resource_classes(
    model: StageModel, window: BusyWindow | None = None
) -> dict[str, dict[str, float | int]]:
    """Each kind of process or service: how many, and its members' mean and highest
    utilisation over the send window (`window`), or over the whole run without one."""
    servers = _servers(model)
    shares = window.utilisations() if window is not None else None
    if shares is None:
        now = max(model.env.now, 1e-9)
        shares = [s.busy / now for s in servers]
    out: dict[str, list[float]] = {}
    for s, u in zip(servers, shares, strict=True):
        out.setdefault(kind_of(s.name), []).append(u)
    return {
        k: {"n": len(v), "mean": round(sum(v) / len(v), 4), "max": round(max(v), 4)}
        for k, v in out.items()
    }


def _background(server: FifoServer) -> dict[str, int]:
    """The aggregate population's jobs at a loaded server (`sim.sample`)."""
    return {"background_jobs": server.bg_jobs} if isinstance(server, LoadedServer) else {}


def population_table(pop: dict[str, Any]) -> str:
    s, d, lat = pop["sends"], pop["deliveries"], pop["latency_ms"]["push"]

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.3g}")

    rows = [
        ("population users", f(pop["users"])),
        (
            "population sends",
            f"{f(s['attempted'])} attempted, {f(s['acked_ok'])} ok, "
            f"{f(s['acked_error'])} error {s['acked_error_by_code'] or ''}, "
            f"{f(s['never_acked'])} never acked",
        ),
        (
            "population deliveries",
            f"{f(d['delivered'])} of {f(d['expected'])} expected "
            f"(push {f(d['push'])}, sync {f(d['sync'])}), "
            f"lost {f(d['lost'])}",
        ),
        (
            "population push ms",
            f"p50 {f(lat['p50'])}  p99 {f(lat['p99'])}  "
            f"p99.9 {f(lat['p99_9'])}  max {f(lat['max'])}",
        ),
    ]
    classes = pop.get("classes") or {}
    if classes:
        rows.append(
            (
                f"utilisation ({pop.get('classes_over', 'run')})",
                "  ".join(
                    f"{k} x{c['n']} mean {c['mean']:.0%} max {c['max']:.0%}"
                    for k, c in classes.items()
                ),
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
