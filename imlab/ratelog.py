"""Log lines that clients can cause, rate-limited so that a hostile client cannot fill the
disk: at most `burst` lines of each kind per `window` seconds, then one line saying how
many of that kind were left out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    start: float
    lines: int = 0
    dropped: int = 0


class LimitedLog:
    """A logger wrapper; `kind` names a fixed category chosen by the code (never client
    text), so the table of windows stays as small as the code's list of kinds."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log one line of `kind` unless its budget is spent; True when it was written."""
        now = self.clock()
        w = self._windows.get(kind)
        if w is None or now - w.start >= self.window:
            if w is not None and w.dropped:
                self.logger.log(
                    level, "%s: %d more like this in the last %.0f s were not logged",
                    kind, w.dropped, now - w.start,
                )  # fmt: skip
            w = self._windows[kind] = _Window(start=now)
        if w.lines >= self.burst:
            w.dropped += 1
            return False
        w.lines += 1
        self.logger.log(level, f"{kind}: {msg}", *args, exc_info=exc_info)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def error(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)
