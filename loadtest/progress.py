"""What a load run prints while it runs and at the end: progress lines, the live status
line, and the verdict lines under the checker's table."""

from __future__ import annotations

import time
from typing import Any, TextIO


class Progress:
    """The run's progress on the terminal: lines, and a ticking status line."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self._last = 0.0
        self._open_line = False

    def say(self, text: str) -> None:
        if self.quiet:
            return
        self.end_line()
        print(text, file=self.out, flush=True)

    def tick(self, text: str) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last < (1.0 if self.tty else 5.0):
            return
        self._last = now
        if self.tty:
            print("\r" + text.ljust(110)[:110], end="", file=self.out, flush=True)
            self._open_line = True
        else:
            print(text, file=self.out, flush=True)

    def end_line(self) -> None:
        if self._open_line:
            print(file=self.out, flush=True)
            self._open_line = False


def status_line(phase: str, elapsed: float, total: float, st: dict[str, Any], gen: str) -> str:
    ev = st.get("events", {})
    recv = ev.get("recv_push", 0) + ev.get("recv_sync", 0)
    left = max(0.0, total - elapsed)
    return (
        f"[{phase} {elapsed:5.1f}s, {left:4.0f}s left] online {st.get('online', 0)}"
        f"  sends {ev.get('send', 0):,} (ok {ev.get('ack_ok', 0):,}, err {ev.get('ack_err', 0):,})"
        f"  recv {recv:,}  lag {st.get('lag_max_s', 0.0) * 1000:.0f}ms  gen {gen}"
    )


def verdict_lines(
    verdict: dict[str, Any], lag: dict[str, Any], cpu: dict[str, Any], warnings: list[str]
) -> str:
    gen = cpu.get("load_generator") or {}
    stage = cpu.get("stage") or {}
    lines = [
        f"schedule lag ms      p50 {lag.get('p50_ms', '-')}  p99 {lag.get('p99_ms', '-')}"
        f"  max {lag.get('max_ms', '-')}  (late >100ms: {lag.get('late_fraction', 0):.1%})",
        f"cpu % of a core      generator {gen.get('total_pct_mean', '-')} "
        f"(busiest process {gen.get('busiest_process_pct_mean', '-')})"
        f"  stage {stage.get('total_pct_mean', '-')}"
        f"  other processes {cpu.get('other_processes_pct_mean', '-')}",
        "load generator       "
        + (
            "LIMIT: " + "; ".join(verdict["reasons"])
            if verdict["generator_limited"]
            else "not the limit"
        ),
    ]
    lines += [f"note                 {n}" for n in verdict["notes"]]
    lines += [f"warning              {w}" for w in warnings]
    return "\n".join(lines)
