"""Every number the report prints goes through `fmt`, wrapped in a fragment that remembers
where it came from in a run's metrics.json (or which metrics it was computed from).

Report text is a sequence of fragments: plain strings, `Num` (one value of one run's
metrics.json, addressed by a key path such as `deliveries.lost` or
`series.acked_ok[12]`), `Calc` (a ratio, sum or product of `Num`s) and, for the few
settings that live beside the runs rather than in them, `Given` (a key of a summary
file such as a capacity ladder's capacity.json). Rendered to
HTML, each number becomes a tagged span a test can parse back and check; rendered to
Markdown, it is the same formatted text.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Scalar = int | float | None
_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def decimals(value: float) -> int:
    """Digits after the point `fmt` shows for a float: three significant digits, at most
    six decimals, none from 100 up."""
    a = abs(value)
    if a == 0 or not math.isfinite(a):
        return 0
    return max(0, min(6, 2 - math.floor(math.log10(a))))


def fmt(value: object) -> str:
    """The one way the report writes a value: thousands separators for integers, floats
    rounded to three significant digits (whole numbers from 100 up) without trailing
    zeros, `n/a` for missing."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        text = f"{value:,.{decimals(value)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def lookup(metrics: dict[str, Any], key: str) -> Any:
    """The value at a key path like `latency_ms.push.p99` or `series.lost[3]`."""
    node: Any = metrics
    for name, index in _KEY_PART.findall(key):
        node = node[int(index)] if index else node[name]
    return node


def number(metrics: dict[str, Any], key: str) -> Scalar:
    """`lookup` for values that must be numbers (or missing: None)."""
    try:
        value = lookup(metrics, key)
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Num:
    """One number of one run's metrics.json."""

    run: str
    key: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class Calc:
    """A number computed from metrics numbers: their ratio, sum or product."""

    op: Literal["ratio", "sum", "product"]
    args: tuple[Num, ...]
    suffix: str = ""

    @property
    def value(self) -> Scalar:
        return calc(self.op, [a.value for a in self.args])


def calc(op: str, values: Sequence[Scalar]) -> Scalar:
    """What `Calc` computes, from plain values (None when an operand is missing)."""
    if not values or any(v is None for v in values):
        return None
    nums = [float(v) for v in values if v is not None]
    if op == "ratio":
        return nums[0] / nums[1] if nums[1] else None
    if op in ("sum", "product"):
        result = float(sum(nums) if op == "sum" else math.prod(nums))
        # A whole result reads as a count ("32 sends/s"), not as "32.0".
        return int(result) if result.is_integer() else result
    raise ValueError(f"unknown op {op!r}")


@dataclass(frozen=True, slots=True)
class Given:
    """A number from a summary file beside the runs rather than from a run's metrics.json
    (a capacity ladder's threshold in its capacity.json), addressed the same way."""

    file: str
    key: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class Code:
    """An identifier (a run folder's name, a file, a spec) shown verbatim, not a number."""

    text: str


Frag = str | Num | Calc | Given | Code
Text = list[Frag]


def join(items: Iterable[Text], sep: str = ", ", last: str = " and ") -> Text:
    """Fragments of several items joined as a list in prose: `a, b and c`."""
    parts = [list(i) for i in items]
    out: Text = []
    for i, part in enumerate(parts):
        if i:
            out.append(last if i == len(parts) - 1 else sep)
        out.extend(part)
    return out


def plain(text: Iterable[Frag], code: str = "") -> str:
    """The text as a reader sees it; `code` quotes identifiers (a backtick in Markdown)."""
    out: list[str] = []
    for f in text:
        if isinstance(f, str):
            out.append(f)
        elif isinstance(f, Code):
            out.append(f"{code}{f.text}{code}")
        elif isinstance(f, Calc):
            out.append(fmt(f.value) + f.suffix)
        else:
            out.append(fmt(f.value))
    return "".join(out)


def to_html(text: Iterable[Frag]) -> str:
    """The text as HTML; every number a span naming its source for the tests."""
    out: list[str] = []
    for f in text:
        if isinstance(f, str):
            out.append(html.escape(f))
        elif isinstance(f, Code):
            out.append(f"<code>{html.escape(f.text)}</code>")
        elif isinstance(f, Num):
            out.append(
                f'<span class="n" data-run="{html.escape(f.run)}" '
                f'data-key="{html.escape(f.key)}">{html.escape(fmt(f.value))}</span>'
            )
        elif isinstance(f, Given):
            out.append(
                f'<span class="g" data-file="{html.escape(f.file)}" '
                f'data-key="{html.escape(f.key)}">{html.escape(fmt(f.value))}</span>'
            )
        else:
            args = html.escape(json.dumps([[a.run, a.key] for a in f.args]))
            out.append(
                f'<span class="c" data-op="{f.op}" data-args="{args}">'
                f"{html.escape(fmt(f.value))}</span>{html.escape(f.suffix)}"
            )
    return "".join(out)
