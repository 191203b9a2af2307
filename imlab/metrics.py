"""Process counters and gauges, rendered in the Prometheus text format for `GET /metrics`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


class Metrics:
    """Named counters (monotonic) and gauges (read on demand), labelled by stage and node."""

    def __init__(self, prefix: str, labels: dict[str, str]) -> None:
        self.prefix = prefix
        self.labels = labels
        self.counters: defaultdict[str, float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1.0) -> None:
        self.counters[name] += value

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "") -> None:
        self.gauges[name] = read
        if help_text:
            self.help[name] = help_text

    def snapshot(self) -> dict[str, float]:
        out = dict(self.counters)
        for name, read in self.gauges.items():
            out[name] = float(read())
        return out

    def render(self) -> str:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        lines: list[str] = []
        for name, value in sorted(self.counters.items()):
            full = f"{self.prefix}_{name}_total"
            lines.append(f"# TYPE {full} counter")
            lines.append(f"{full}{{{label_text}}} {value:g}")
        for name, read in sorted(self.gauges.items()):
            full = f"{self.prefix}_{name}"
            if name in self.help:
                lines.append(f"# HELP {full} {self.help[name]}")
            lines.append(f"# TYPE {full} gauge")
            lines.append(f"{full}{{{label_text}}} {float(read()):g}")
        return "\n".join(lines) + "\n"
