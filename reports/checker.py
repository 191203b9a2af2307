"""The checker: judge what the clients of one run saw and write the run's metrics.json.

It reads only the run folder (manifest and histories, docs/PROTOCOL.md sections 5-6), so a
real run and a simulated run are judged by the same code. What it computes is
docs/PROTOCOL.md section 7, modelled on Jepsen's queue checkers: every acknowledged
message must reach every expected recipient exactly once, and the order in which
recipients saw messages must agree with the server's sequence, with each other,
and with each sender's send order.

The checks themselves, one property each, and their definitions are in `reports.checks`;
this module is the entry point: `check` a run folder, print its `summary_table`, and
`python -m reports.checker RUN_DIR...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reports.checks import (
    ANOMALY_KINDS,
    CHECKER_VERSION,
    VERDICTS,
    compose,
    summary_table,
    verdict_text,
)
from reports.checks.index import deliver, walk
from reports.history import METRICS, Run, load_run

__all__ = ["ANOMALY_KINDS", "CHECKER_VERSION", "VERDICTS", "check", "compute", "main",
           "push_latencies", "summary_table", "verdict_text"]  # fmt: skip


def compute(run: Run) -> dict[str, Any]:
    """All metrics of a loaded run (what check() writes to metrics.json)."""
    return compose(run)


def push_latencies(run: Run) -> list[float]:
    """Every push latency (intended send -> first push receipt by an expected recipient),
    in seconds: exactly the sample behind `latency_ms.push` in metrics.json."""
    return list(deliver(walk(run)).push_lat)


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
