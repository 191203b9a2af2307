"""Reading run folders: the manifest and the merged, time-ordered event history.

A run folder holds `manifest.json` and one `history*.jsonl` file per process
(docs/PROTOCOL.md sections 5 and 6). This module knows that layout and nothing about what the
events mean; the checker does the judging.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from imlab.experiment.history import Event
from imlab.experiment.runfolder import HISTORY_GLOB, MANIFEST, METRICS, history_files, load_manifest

__all__ = ["HISTORY_GLOB", "MANIFEST", "METRICS", "Event", "Run", "history_files",
           "load_manifest", "load_run", "read_history"]  # fmt: skip

# Lines are parsed in batches as one JSON array, which is about twice as fast as
# json.loads per line; a batch that fails falls back to line by line.
_BATCH = 20_000


@dataclass
class Run:
    """A loaded run folder: manifest plus every history merged and sorted by `t`."""

    path: Path
    manifest: dict[str, Any]
    events: list[Event]
    files: list[str] = field(default_factory=list)
    malformed_lines: int = 0


def _valid(obj: object) -> bool:
    if not isinstance(obj, dict):
        return False
    t = obj.get("t")
    return (
        isinstance(t, int | float)
        and not isinstance(t, bool)
        and math.isfinite(t)
        and isinstance(obj.get("ev"), str)
    )


def _parse_batch(lines: list[str]) -> tuple[list[Event], int]:
    """Parse stripped, non-empty lines; return the events and the malformed count."""
    try:
        parsed = json.loads("[" + ",".join(lines) + "]")
        if not isinstance(parsed, list) or len(parsed) != len(lines):
            raise ValueError("a line held more than one value")
    except ValueError:
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                parsed.append(None)
    events = [cast(Event, obj) for obj in parsed if _valid(obj)]
    return events, len(lines) - len(events)


def read_history(path: Path) -> tuple[list[Event], int]:
    """All events of one JSONL file in file order, and the number of malformed lines.

    A malformed line (say, the half-written last line of a killed process) is
    skipped and counted, never fatal.
    """
    events: list[Event] = []
    bad = 0
    for batch in _batches(_nonblank(path), _BATCH):
        got, nbad = _parse_batch(batch)
        events.extend(got)
        bad += nbad
    return events, bad


def _nonblank(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_run(run_dir: Path) -> Run:
    """Load a run folder: the manifest and all histories merged into one list sorted by `t`.

    The sort is stable, so events with equal `t` keep their file order (and files
    their name order): a process's own sequence of events is never reshuffled.
    """
    run_dir = Path(run_dir)
    files = history_files(run_dir)
    events: list[Event] = []
    bad = 0
    for path in files:
        got, nbad = read_history(path)
        events.extend(got)
        bad += nbad
    events.sort(key=itemgetter("t"))
    return Run(
        path=run_dir,
        manifest=load_manifest(run_dir),
        events=events,
        files=[p.name for p in files],
        malformed_lines=bad,
    )
