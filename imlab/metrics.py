"""Process counters and gauges, rendered in the Prometheus text format for `GET /metrics`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

# A labelled gauge family: (extra labels, value) pairs, read on demand.
Series = Callable[[], Iterable[tuple[dict[str, str], float]]]


class Metrics:
    """Named counters (monotonic) and gauges (read on demand), labelled by stage and node."""

    def __init__(self, prefix: str, labels: dict[str, str]) -> None:
        self.prefix = prefix
        self.labels = labels
        self.counters: defaultdict[str, float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.series_readers: dict[str, Series] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1.0) -> None:
        self.counters[name] += value

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "") -> None:
        self.gauges[name] = read
        if help_text:
            self.help[name] = help_text

    def series(self, name: str, read: Series, help_text: str = "") -> None:
        """A gauge with extra labels per value (e.g. a consumer's offset per partition)."""
        self.series_readers[name] = read
        if help_text:
            self.help[name] = help_text

    def snapshot(self) -> dict[str, float]:
        out = dict(self.counters)
        for name, read in self.gauges.items():
            out[name] = float(read())
        for name, read_series in self.series_readers.items():
            for labels, value in read_series():
                out[f"{name}{{{_label_text(labels)}}}"] = float(value)
        return out

    def render(self) -> str:
        label_text = _label_text(self.labels)
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
        for name, read_series in sorted(self.series_readers.items()):
            full = f"{self.prefix}_{name}"
            if name in self.help:
                lines.append(f"# HELP {full} {self.help[name]}")
            lines.append(f"# TYPE {full} gauge")
            for labels, value in read_series():
                lines.append(f"{full}{{{_label_text({**self.labels, **labels})}}} {float(value):g}")
        return "\n".join(lines) + "\n"


def _label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
