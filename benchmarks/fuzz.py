"""The fuzz at benchmark size: starts a stage, runs imlab.fuzz with at least 2,000 generated
cases per client event the stage has (v5: `refresh`, `receipt` and the group events too),
as many connect attempts (`--connects`), and a tenth as many undecodable packets, then
prints per family: tried, ok, error codes, no ack, disconnects, internal (which must be
0), and the client-facing process's RSS before and after.

    .venv/bin/python benchmarks/fuzz.py --stage v2 [--cases 2000] [--seed N] [--json out.json]
    .venv/bin/python benchmarks/fuzz.py --stage v5 --cases 2000 --connects 200

On a stage with tokens (v4, v5) half the connect attempts carry hostile tokens, as many
of each kind: expired, forged (another secret), `alg: none`, another algorithm,
wrong-typed claims, and on v5 also too long a life and revoked (tokens issued, then
revoked in the stage's PostgreSQL through `imlab.sqlstore`). All must be refused.

v3/v4 cap successful group creations (`--max-groups`, default 20 there): each is a Kafka
topic, and a thousand of them slow the broker for good (versions/v4/STEP.md). The exit
status is 1 when anything got `internal`, no ack, an undocumented code, or a hostile
token was let in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from imlab.cluster import Cluster, ClusterSpec, machine_info
from imlab.fuzz import DOCUMENTED_CODES, Fuzzer, Tally, event_kinds
from imlab.services import stop_all


def rss_mb(cluster: Cluster) -> float:
    pids = [svc.pid for svc in cluster.nodes.values() if svc.pid is not None]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


async def run(
    cluster: Cluster, cases: int, seed: int, max_groups: int, connects: int
) -> dict[str, Tally]:
    info = cluster.spec.info
    fz = Fuzzer(
        cluster.endpoints[0],
        cluster.spec.stage,
        cluster.spec.secret,
        token_ttl=info.token_ttl(600.0) if info.uses_tokens else None,
        db_url=cluster.db_url,  # v5: revoked tokens are among the connect attempts
    )
    out: dict[str, Tally] = {}
    for kind in event_kinds(info.features):
        t0 = time.monotonic()
        out[kind] = await fz.events(kind, cases, seed, max_groups=max_groups)
        print(f"  {kind:<12} {time.monotonic() - t0:6.1f} s", flush=True)
    t0 = time.monotonic()
    out["connect"] = await fz.connects(connects, seed)
    print(f"  {'connect':<12} {time.monotonic() - t0:6.1f} s", flush=True)
    out["undecodable"] = await fz.undecodable(max(2, cases // 10), seed)
    if not await fz.pair_still_chats():
        out["after"] = Tally(tried=1, no_ack=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", default="v2", choices=["v1", "v2", "v3", "v4", "v5"])
    ap.add_argument("--cases", type=int, default=2000, help="generated cases per event")
    ap.add_argument(
        "--connects", type=int, default=None, help="connect attempts (default: --cases)"
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-groups", type=int, default=None, help="successful create_group cap")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    max_groups = args.max_groups
    if max_groups is None:
        # v3/v4: a topic per group. v5 needs no cap (fixed topics, a quota of 100 per creator
        # answered `rate_limited` or `forbidden`), so its quota is fuzzed too.
        max_groups = 20 if args.stage in ("v3", "v4") else args.cases
    connects = args.connects if args.connects is not None else args.cases
    spec = ClusterSpec(args.stage, workers=2)
    with tempfile.TemporaryDirectory(prefix="imlab-fuzz-") as tmp:
        cluster = Cluster(spec, Path(tmp) / "run").start()
        try:
            time.sleep(1.0)
            before = rss_mb(cluster)
            started = time.time()
            print(f"fuzzing {args.stage} at {cluster.endpoints[0]}, seed {seed}", flush=True)
            tallies = asyncio.run(run(cluster, args.cases, seed, max_groups, connects))
            after = rss_mb(cluster)
            elapsed = time.time() - started
        finally:
            cluster.stop()
            stop_all()
    print_table(tallies)
    print_attacks(tallies["connect"])
    print(f"server RSS: {before:.1f} MB before, {after:.1f} MB after; {elapsed:.0f} s; seed {seed}")
    for kind, t in tallies.items():
        for sample in t.samples:
            print(f"  {kind}: {sample}")
    failed = any(
        t.internal or t.no_ack or t.accepted_bad or set(t.errors) - DOCUMENTED_CODES
        for t in tallies.values()
    )
    if args.json:
        doc: dict[str, Any] = {
            "stage": args.stage,
            "cases": args.cases,
            "connects": connects,
            "seed": seed,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "rss_mb": {"before": round(before, 1), "after": round(after, 1)},
            "seconds": round(elapsed, 1),
            "families": {k: t.summary() for k, t in tallies.items()},
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    sys.exit(1 if failed else 0)


def print_attacks(t: Tally) -> None:
    """The hostile tokens among the connect attempts: all must have been refused."""
    if not t.attacks:
        return
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(t.attacks.items()))
    print(f"hostile tokens: {sum(t.attacks.values())} ({kinds}); accepted {t.accepted_bad}")


def print_table(tallies: dict[str, Tally]) -> None:
    print(
        f"{'family':<12} {'tried':>6} {'ok':>6} {'no-ack':>6} {'disc':>5} {'internal':>8}  errors"
    )
    for kind, t in tallies.items():
        errors = ", ".join(f"{c} {n}" for c, n in sorted(t.errors.items()))
        print(
            f"{kind:<12} {t.tried:>6} {t.ok:>6} {t.no_ack:>6} {t.disconnects:>5} "
            f"{t.internal:>8}  {errors}"
        )


if __name__ == "__main__":
    main()
