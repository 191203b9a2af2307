"""`build_report(run_dirs, out)`: the comparison report of several runs, as a self-contained
`index.html` with PNG figures beside it and a `summary.md` holding the main table and
the same findings for terminal and forge readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports import html
from reports.figures import FIGURE_BUILDERS, Figure, Item, Note
from reports.findings import findings
from reports.numbers import Calc, Code, Frag, Num, Text, fmt, plain, to_html
from reports.rundata import RunData, load_runs

TITLE = "imlab: the stages compared"

SECTIONS = (
    ("architecture", "Architecture of each stage"),
    ("latency", "Push latency"),
    ("throughput", "Throughput vs offered load"),
    ("capacity", "Capacity: each stage's knee"),
    ("faults", "Faults: loss, duplicates, ordering, and what happens in the window"),
    ("sim", "Simulated vs real"),
    ("scaleout", "Scale-out: knee against node count (simulated)"),
)

_ORDER_KEYS = (
    "anomalies.seq_backwards",
    "anomalies.order_disagreements",
    "anomalies.fifo_violations",
)


def _n(key: str) -> Callable[[RunData], Text]:
    return lambda r: [r.num(key)]


def _offered(r: RunData) -> Text:
    o = r.offered()
    return [o] if o is not None else ["n/a"]


def _verdict(r: RunData) -> Text:
    v = r.metrics.get("verdict")
    if isinstance(v, dict):
        return [str(v.get("verdict"))]
    return ["clean" if r.metrics.get("summary", {}).get("clean") else "anomalous"]


def _order(r: RunData) -> Text:
    return [Calc("sum", tuple(r.num(k) for k in _ORDER_KEYS))]


# The main table: (header, cell). The first TEXT_COLUMNS columns are names, not numbers.
COLUMNS: tuple[tuple[str, Callable[[RunData], Text]], ...] = (
    ("run", lambda r: [Code(r.rid)]),
    ("kind", lambda r: [r.kind]),
    ("stage", lambda r: [r.stage]),
    ("scenario", lambda r: [r.scenario]),
    ("fault", lambda r: [r.fault_label]),
    ("verdict", _verdict),
    ("offered sends/s", _offered),
    ("sends ok", _n("sends.acked_ok")),
    ("sends err", _n("sends.acked_error")),
    ("never acked", _n("sends.never_acked")),
    ("expected", _n("deliveries.expected")),
    ("delivered", _n("deliveries.delivered")),
    ("lost", _n("deliveries.lost")),
    ("dup", _n("deliveries.duplicated")),
    ("order anomalies", _order),
    ("p50 ms", _n("latency_ms.push.p50")),
    ("p99 ms", _n("latency_ms.push.p99")),
    ("accepted sends/s", _n("throughput.accepted_sends_per_s")),
)
TEXT_COLUMNS = 6


@dataclass
class Report:
    """What `build_report` wrote."""

    out: Path
    html: Path
    summary: Path
    images: list[Path] = field(default_factory=list)
    runs: list[RunData] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # unfinished run folders


def table_rows(runs: Sequence[RunData]) -> list[list[Text]]:
    return [[cell(r) for _h, cell in COLUMNS] for r in runs]


def markdown_table(runs: Sequence[RunData]) -> str:
    headers = [h for h, _c in COLUMNS]
    align = ["---" if i < TEXT_COLUMNS else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    for row in table_rows(runs):
        lines.append("| " + " | ".join(plain(c, code="`") for c in row) + " |")
    return "\n".join(lines)


def _intro(runs: Sequence[RunData]) -> Text:
    kinds = sorted({r.kind for r in runs})
    stages = sorted({r.stage for r in runs})
    scenarios = sorted({r.scenario for r in runs})
    return [
        "Runs of stages ",
        ", ".join(stages),
        " in scenarios ",
        ", ".join(scenarios),
        " (",
        " and ".join("simulated" if k == "sim" else "real" for k in kinds),
        "). Every number comes from a run's metrics.json, written by the checker; "
        "latency counts from each send's intended time to the push receipt. "
        "Stage colours are the same in every figure; simulated runs are dashed or hatched.",
    ]


def _run_detail(r: RunData) -> str:
    def row(name: str, text: Text) -> str:
        return f"<dt>{name}</dt><dd>{to_html(text)}</dd>"

    params: list[Text] = []
    for k, v in r.params.items():
        if v is None or v == "" or v == {} or v == []:
            continue  # not set for this run (a group size in a dm run)
        simple = isinstance(v, int | float) and not isinstance(v, bool) and "." not in k
        params.append([f"{k} ", r.num(f"run.params.{k}") if simple else Code(_short(v))])
    faults: list[Text] = []
    for i, f in enumerate(r.faults):
        ft: Text = [f"{f.get('kind')} on {f.get('target')} from ", r.num(f"faults[{i}].start_rel")]
        ft += [" s to ", r.num(f"faults[{i}].end_rel"), " s"]
        faults.append(ft)
    sends: Text = [r.num("sends.attempted"), " attempted, ", r.num("sends.acked_ok"), " ok, "]
    sends += [r.num("sends.acked_error"), " error, ", r.num("sends.never_acked"), " never acked"]
    dl: Text = [r.num("deliveries.push"), " by push, ", r.num("deliveries.sync"), " by sync, "]
    dl += [r.num("deliveries.unjudged"), " unjudged (acked after the end)"]
    avail: Text = [r.num("sends.acked_ok"), " of ", r.num("sends.attempted"), " acked ok, "]
    avail += [r.num("sends.never_acked"), " never acked"]
    parts = [
        row("folder", [Code(str(r.path))]),
        row("kind, stage, scenario", [f"{r.kind}, {r.stage}, {r.scenario}"]),
        row("parameters", _joined(params) or ["none recorded"]),
        row("faults", _joined(faults) or ["none"]),
        row("sends", sends),
        row("deliveries", dl),
        row("availability", avail),
        row("verdict", _verdict(r)),
        row("events judged", [r.num("checker.events")]),
    ]
    warnings = r.metrics.get("checker", {}).get("warnings") or []
    if warnings:
        parts.append(row("checker warnings", _joined([[Code(str(w))] for w in warnings])))
    if r.latencies_ms is None:
        parts.append(
            row(
                "latency CDF",
                [
                    "not drawn: no push latencies in the histories "
                    "(percentiles from metrics.json only)"
                ],
            )
        )
    return (
        f'<dl class="run" id="run-{r.rid}"><dt><code>{r.rid}</code></dt><dd><dl>'
        + "".join(parts)
        + "</dl></dd></dl>"
    )


def _short(v: Any) -> str:
    """A parameter as `key=value` text, never a Python repr."""
    text = _spelled(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _spelled(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_spelled(x)}" for k, x in v.items() if x is not None)
    if isinstance(v, list | tuple):
        return ", ".join(_spelled(x) for x in v)
    return fmt(v)


def _joined(items: list[Text], sep: str = "; ") -> Text:
    out: Text = []
    for i, t in enumerate(items):
        if i:
            out.append(sep)
        out.extend(t)
    return out


def build_report(run_dirs: Sequence[Path], out: Path) -> Report:
    """Read (and where needed check) the run folders, draw every figure into `out`, and
    write `out/index.html` and `out/summary.md`."""
    sweeps, run_dirs = find_sweeps([Path(p) for p in run_dirs])
    runs, skipped = load_runs(run_dirs) if run_dirs or not sweeps else ([], [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    for build in FIGURE_BUILDERS:
        items.extend(build(runs, out))
    items.extend(scaleout_items(sweeps, out))

    found = findings(runs)
    body = [
        html.section("findings", "Findings", [html.bullets(found)]),
        html.section(
            "table",
            "Main table",
            [html.table([h for h, _c in COLUMNS], table_rows(runs), TEXT_COLUMNS)],
        ),
    ]
    nav = [("findings", "Findings"), ("table", "Main table")]
    for anchor, title in SECTIONS:
        parts = [
            html.figure(i) if isinstance(i, Figure) else html.note(i)
            for i in items
            if i.section == anchor
        ]
        if parts:
            body.append(html.section(anchor, title, parts))
            nav.append((anchor, title.split(":")[0]))
    details = [_run_detail(r) for r in runs]
    if skipped:
        details.append(html.note(Note("runs", _skipped(skipped))))
    body.append(html.section("runs", "Runs", details))
    nav.append(("runs", "Runs"))
    page = html.document(TITLE, _intro(runs), nav, body)
    html_path = out / "index.html"
    html_path.write_text(page, encoding="utf-8")

    summary = out / "summary.md"
    summary.write_text(summary_markdown(runs, items, skipped), encoding="utf-8")
    images = [out / i.file for i in items if isinstance(i, Figure)]
    return Report(out, html_path, summary, images, runs, items, skipped)


def find_sweeps(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(sweep folders, the other paths): a folder with a `sweep.json` (`imlab sim
    --sweep`) is a sweep; a folder of run folders is searched one level down for them."""
    sweeps: list[Path] = []
    rest: list[Path] = []
    for p in paths:
        if (p / "sweep.json").exists():
            sweeps.append(p)
            continue
        below = sorted(c for c in p.iterdir() if (c / "sweep.json").exists()) if p.is_dir() else []
        sweeps += below
        holds_runs = (
            not below
            or (p / "manifest.json").exists()
            or any((c / "manifest.json").exists() for c in p.iterdir() if c.is_dir())
        )
        if holds_runs:  # a folder of sweeps alone is not searched for runs
            rest.append(p)
    return sweeps, rest


def scaleout_items(sweeps: Sequence[Path], out: Path) -> list[Item]:
    """The scale-out figure of each sweep, captioned by the sentences computed from it."""
    from reports.figures.scaleout import scaleout_figure

    items: list[Item] = []
    for i, path in enumerate(sweeps):
        data = json.loads((path / "sweep.json").read_text(encoding="utf-8"))
        name = f"scaleout-{i + 1}.png" if len(sweeps) > 1 else "scaleout.png"
        scaleout_figure(data, out / name)
        caption: Text = [
            f"From {path.name} ({', '.join(data['sweeps'])}; {data['wall_seconds']:,.0f} s "
            "of wall time). " + " ".join(data["sentences"])
        ]
        items.append(Figure("scaleout", "Knee against node count", name, caption))
    return items


def _skipped(skipped: Sequence[Path]) -> Text:
    text: Text = ["Skipped, with histories but no manifest.json (unfinished runs?): "]
    return text + _joined([[Code(str(p))] for p in skipped], sep=", ")


def summary_markdown(
    runs: Sequence[RunData], items: Sequence[Item], skipped: Sequence[Path]
) -> str:
    lines = [f"# {TITLE}", "", plain(_intro(runs)), "", "## Findings", ""]
    lines += [f"- {plain(t, code='`')}" for t in findings(runs)]
    lines += ["", "## Main table", "", markdown_table(runs)]
    if skipped:
        lines += ["", plain(_skipped(skipped), code="`")]
    for anchor, title in SECTIONS:
        mine = [i for i in items if i.section == anchor]
        if not mine:
            continue
        lines += ["", f"## {title}"]
        for i in mine:
            if isinstance(i, Figure):
                lines += ["", f"**{i.title}** ([figure]({i.file}))", "", plain(i.caption)]
            else:
                lines += ["", f"_{plain(i.text)}_"]
    return "\n".join(lines) + "\n"


__all__ = ["COLUMNS", "TEXT_COLUMNS", "Frag", "Note", "Num", "Report", "build_report"]
