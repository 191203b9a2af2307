"""How the runner and the Locust processes talk during a load run: files in
`<run>/loadgen/`, named and read or written only here, by both sides.

- the plan (`plan.json`), written once by the runner; its path reaches the Locust
  processes in the environment variable `IMLAB_LOAD_PLAN`;
- `control.json`, written by the runner: the send window, then the order for the
  final catch-up (`final`);
- one `status-<pid>.json` per Locust process: counts for progress, settling and the end;
- `slots`, a counter the Locust processes share to hand out the planned identities.

Writes go through a temporary file and a rename, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.plan import LoadPlan

PLAN_ENV = "IMLAB_LOAD_PLAN"
PLAN_FILE = "plan.json"
CONTROL_FILE = "control.json"
SLOTS_FILE = "slots"
STATUS_GLOB = "status-*.json"


def _write_atomically(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.stem}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


# ---------------------------------------------------------------- the plan


def write_plan(loadgen: Path, plan: LoadPlan) -> dict[str, str]:
    """Write the plan; returns the environment a Locust process needs to find it."""
    path = loadgen / PLAN_FILE
    plan.save(path)
    return {PLAN_ENV: str(path.resolve())}


def read_plan(environ: Mapping[str, str] = os.environ) -> LoadPlan:
    """The plan of the run this Locust process belongs to."""
    return LoadPlan.load(environ[PLAN_ENV])


def loadgen_dir(plan: LoadPlan) -> Path:
    return Path(plan.run_dir) / "loadgen"


# ---------------------------------------------------------------- control


@dataclass(frozen=True)
class Control:
    """The runner's orders: send between `send_start` and `send_end` (epoch seconds);
    with `final`, make the final catch-up and close. A `warm_start` before `send_start`
    asks for the same schedule from then on, unrecorded (`WARMUP_PREFIX` client ids)."""

    send_start: float | None
    send_end: float | None
    final: bool = False
    warm_start: float | None = None


def write_control(loadgen: Path, control: Control) -> None:
    doc = {"send_start": control.send_start, "send_end": control.send_end, "final": control.final}
    if control.warm_start is not None:
        doc["warm_start"] = control.warm_start
    _write_atomically(loadgen / CONTROL_FILE, doc)


class ControlReader:
    """Reads the control file when it has changed since the last read."""

    def __init__(self, loadgen: Path) -> None:
        self.path = loadgen / CONTROL_FILE
        self._mtime = 0.0

    def poll(self) -> Control | None:
        """The orders, when they are new; None when unchanged, absent or half-written."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime == self._mtime:
            return None
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written; read it next time
        self._mtime = mtime
        start, end, warm = doc.get("send_start"), doc.get("send_end"), doc.get("warm_start")
        return Control(
            None if start is None else float(start),
            None if end is None else float(end),
            bool(doc.get("final")),
            None if warm is None else float(warm),
        )


# ---------------------------------------------------------------- status


def write_status(loadgen: Path, pid: int, status: dict[str, Any]) -> None:
    _write_atomically(loadgen / f"status-{pid}.json", status)


def read_status(loadgen: Path) -> list[dict[str, Any]]:
    """Every Locust process's last status (a file being replaced is skipped)."""
    out = []
    for path in sorted(loadgen.glob(STATUS_GLOB)):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


# ---------------------------------------------------------------- slots


def claim_slot(loadgen: Path) -> int:
    """The next planned identity's index, unique across the Locust processes."""
    with open(loadgen / SLOTS_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read().strip() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(n + 1))
        f.flush()
    return n
