"""Reading py-spy's raw (collapsed) stacks: self time per function, grouped by what the
function belongs to (JSON, Socket.IO framing, logging, metrics, Redis, Kafka, asyncio, the
application), and a plain SVG flame graph of the same stacks. Used by
`benchmarks/profile.py`; nothing here samples anything.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

# Checked in order; the first group whose pattern matches a frame's file wins.
GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("json", re.compile(r"(^|/)(json|orjson)/|(^|/)engineio/json\.py$|(^|/)imlab/fastjson\.py$")),
    ("socketio", re.compile(r"(^|/)(socketio|engineio)/|(^|/)imlab/sioguard\.py$")),
    ("logging", re.compile(r"(^|/)logging/|(^|/)imlab/ratelog\.py$")),
    ("metrics", re.compile(r"(^|/)imlab/metrics\.py$")),
    ("redis", re.compile(r"(^|/)redis/")),
    ("kafka", re.compile(r"(^|/)(aiokafka|kafka)/")),
    ("aiohttp", re.compile(r"(^|/)(aiohttp|multidict|yarl|frozenlist|aiosignal)/")),
    ("asyncio", re.compile(r"(^|/)(asyncio|uvloop)/|(^|/)(selectors|socket|ssl)\.py$")),
    ("app", re.compile(r"(^|/)(imlab|versions)/")),
)
OTHER = "other"

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, slots=True)
class Frame:
    func: str
    file: str

    @property
    def name(self) -> str:
        return f"{self.func} ({self.file})"


def parse_frame(text: str) -> Frame:
    """`func (file:line)` as py-spy writes it; the line is dropped, so a function's
    samples add up whichever of its lines was running."""
    m = _FRAME.match(text.strip())
    if m is None:
        return Frame(text.strip(), "")
    return Frame(m["func"], m["file"])


def group_of(frame: Frame) -> str:
    for name, pattern in GROUPS:
        if pattern.search(frame.file):
            return name
    return OTHER


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy `--format raw` lines (`frame;frame;...;leaf count`) as (stack, count)."""
    out: list[tuple[list[str], int]] = []
    for line in lines:
        line = line.rstrip("\n")
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit() or not stack:
            continue
        out.append((stack.split(";"), int(count)))
    return out


@dataclass
class Profile:
    """Self samples per function and per group, over any number of raw stacks."""

    total: int = 0
    functions: Counter[Frame] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)

    def add(self, stacks: Iterable[tuple[list[str], int]]) -> Profile:
        for stack, count in stacks:
            leaf = parse_frame(stack[-1])
            self.total += count
            self.functions[leaf] += count
            self.groups[group_of(leaf)] += count
        return self

    def summary(self, top: int = 15) -> dict[str, object]:
        """Shares of the self samples (percent), by group and for the `top` functions."""

        def pct(n: int) -> float:
            return round(100.0 * n / self.total, 1) if self.total else 0.0

        return {
            "samples": self.total,
            "groups_pct": {g: pct(n) for g, n in self.groups.most_common()},
            "top": [
                {"function": f.name, "group": group_of(f), "self_pct": pct(n)}
                for f, n in self.functions.most_common(top)
            ],
        }


# ---------------------------------------------------------------- flame graph

_COLOURS = {
    "json": "#e8a33d",
    "socketio": "#d9603b",
    "logging": "#9b59b6",
    "metrics": "#f1948a",
    "redis": "#a93226",
    "kafka": "#16a085",
    "aiohttp": "#2980b9",
    "asyncio": "#7f8c8d",
    "app": "#27ae60",
    OTHER: "#bdc3c7",
}


@dataclass
class _Node:
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flame_svg(stacks: Iterable[tuple[list[str], int]], title: str, width: int = 1200) -> str:
    """An SVG flame graph (root at the bottom), coloured by group; hover shows the frame
    and its share of the samples."""
    root = _Node()
    depth_max = 0
    for stack, count in stacks:
        root.count += count
        depth_max = max(depth_max, len(stack))
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, _Node())
            node.count += count
    row, top_margin = 16, 24
    height = top_margin + depth_max * row + 4
    rects: list[str] = []

    def draw(node: _Node, x: float, depth: int) -> None:
        y = height - 4 - (depth + 1) * row
        for text, child in sorted(node.children.items()):
            w = width * child.count / root.count
            if w >= 0.3:
                frame = parse_frame(text)
                share = 100.0 * child.count / root.count
                label = html.escape(f"{frame.name}: {child.count} samples, {share:.1f}%")
                short = html.escape(frame.func[: int(w / 7)]) if w > 21 else ""
                rects.append(
                    f'<g><title>{label}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="{_COLOURS[group_of(frame)]}"/>'
                    f'<text x="{x + 2:.1f}" y="{y + row - 4}">{short}</text></g>'
                )
                draw(child, x, depth + 1)
            x += w

    if root.count:
        draw(root, 0.0, 0)
    body = "\n".join(rects)
    legend = " ".join(f'<tspan fill="{c}">{g}</tspan>' for g, c in _COLOURS.items())
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">\n'
        f'<text x="4" y="14">{html.escape(title)}: {root.count} samples '
        f"({legend})</text>\n{body}\n</svg>\n"
    )
