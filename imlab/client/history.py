"""Writing a client's history records (`imlab.experiment.history.event` dicts, which the
core returns as data) to a JSON-lines file; the only part of the client that writes files.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol, TextIO


class HistorySink(Protocol):
    """Where a client's history records go."""

    def write(self, rec: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


class HistoryRecorder:
    """Appends history records as JSON lines; safe to share between threads/greenlets."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", buffering=1 << 16)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
