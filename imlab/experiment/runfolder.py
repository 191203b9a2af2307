"""The run folder every run leaves, real or simulated: where it goes, what its files
are called, and how its manifest is written and read (docs/PROTOCOL.md, the run
folder). The load tool, the simulator, `imlab up` and the checker all go through it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

MANIFEST = "manifest.json"
METRICS = "metrics.json"
CLUSTER = "cluster.json"  # what `imlab up` started, for `imlab kill` and friends
HISTORY_GLOB = "history*.jsonl"
RUNS = Path("runs")


def new_run_dir(kind: str, stage: str, base: Path | None = None) -> Path:
    """A fresh `runs/<UTC time>-<kind>-<stage>[-n]` folder, created."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    root = base or RUNS
    path = root / f"{stamp}-{kind}-{stage}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{kind}-{stage}-{n}"
    path.mkdir(parents=True)
    return path


def history_files(run_dir: Path) -> list[Path]:
    """The run's history files, in name order (the order ties in `t` are kept in)."""
    return sorted(Path(run_dir).glob(HISTORY_GLOB))


def write_manifest(run_dir: Path, manifest: dict[str, Any], *, indent: int = 1) -> Path:
    """Write the manifest whole (through a temporary file, so a reader never sees half)."""
    path = Path(run_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=indent) + "\n")
    tmp.replace(path)
    return path


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, or an empty dict when the folder has none."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: manifest must be a JSON object")
    return cast(dict[str, Any], data)
