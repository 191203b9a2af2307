"""The report, built from small synthetic run folders judged by the real checker: every
printed number traces back to metrics.json, every image is a real PNG, the page needs
no network, and the generated sentences state the actual figures."""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image
import matplotlib.text
import pytest

from imlab import stages
from reports.architecture import ARCHITECTURES, markdown
from reports.cli import register
from reports.figures import Figure
from reports.numbers import decimals, fmt, plain
from reports.report import COLUMNS, Report, build_report
from reports.rundata import push_latencies_ms
from reports.stats import rank_index

T0 = 1_700_000_000.0


def make_run(
    root: Path,
    name: str,
    *,
    stage: str,
    scenario: str = "group",
    kind: str = "real",
    users: int = 16,
    rate: float = 2.0,
    duration: float = 20.0,
    group_size: int = 8,
    base_ms: float = 5.0,
    capacity: float = 1e9,
    fault: tuple[str, str, float, float] | None = None,
    effect: str = "lose",
    refuse_all: str | None = None,
    anomalies: bool = False,
    seed: int = 1,
) -> Path:
    """Write a run folder and return it.

    `fault` is (kind, target, start, end) in seconds after the start; in its window
    `effect` says what happens to a send: `lose` (acked ok, half the recipients never
    get it), `refuse` (acked `unavailable`) or `sync` (recovered by sync after the
    window). `refuse_all` acks every send with that error (a stage without the
    feature). Above `capacity` sends/s the excess is never acked and latency grows.
    """
    rng = random.Random(f"{name}/{seed}")
    run = root / name
    run.mkdir(parents=True)
    names = [f"u{i:03d}" for i in range(users)]
    groups = {f"g{k}": names[i : i + group_size] for k, i in enumerate(range(0, users, group_size))}
    group_of = {u: g for g, members in groups.items() for u in members}
    offered = users * rate
    util = min(offered / capacity, 0.97)
    keep = min(1.0, capacity / offered)
    ev: list[dict[str, Any]] = []
    seqs = dict.fromkeys(groups, 0)
    for u in names:
        ev.append({"t": T0 + rng.uniform(-0.5, -0.1), "ev": "connect", "user": u, "ok": True})
    sends = []
    for i, u in enumerate(names):
        phase = (i * 0.618) % 1.0 / rate
        k = 0
        while phase + k / rate < duration:
            sends.append((phase + k / rate, u, k))
            k += 1
    sends.sort()
    backlog = 0.0
    for at, u, k in sends:
        gid = group_of[u]
        conv = f"group:{gid}"
        msg = f"{u}-{k}"
        t = T0 + at + rng.uniform(0, 0.002)
        ev.append({"t": t, "ev": "send", "user": u, "conv": conv, "msg": msg, "intended": T0 + at})
        if refuse_all:
            ev.append(
                {
                    "t": t + 0.001,
                    "ev": "ack",
                    "user": u,
                    "msg": msg,
                    "ok": False,
                    "err": refuse_all,
                    "seq": None,
                }
            )
            continue
        if keep < 1.0 and rng.random() > keep:
            backlog += 1.0 / capacity
            continue
        in_fault = fault is not None and fault[2] <= at < fault[3]
        if in_fault and effect == "refuse":
            ev.append(
                {
                    "t": t + 0.5,
                    "ev": "ack",
                    "user": u,
                    "msg": msg,
                    "ok": False,
                    "err": "unavailable",
                    "seq": None,
                }
            )
            continue
        seqs[gid] += 1
        seq = seqs[gid]
        queue = backlog + base_ms / 1000 * util / (1 - util)
        ack_t = t + queue + rng.lognormvariate(math.log(base_ms / 2000), 0.3)
        ev.append(
            {"t": ack_t, "ev": "ack", "user": u, "msg": msg, "ok": True, "err": None, "seq": seq}
        )
        for member in groups[gid]:
            lat = queue + rng.lognormvariate(math.log(base_ms / 1000), 0.5)
            via = "push"
            if in_fault and effect == "lose" and member != u and rng.random() < 0.5:
                continue
            if in_fault and effect == "sync" and member != u:
                lat, via = fault[3] - at + 1.0 + rng.uniform(0, 0.2), "sync"  # type: ignore[index]
            ev.append(
                {
                    "t": T0 + at + lat,
                    "ev": "recv",
                    "user": member,
                    "conv": conv,
                    "msg": msg,
                    "seq": seq,
                    "via": via,
                    "sender": u,
                }
            )
    if anomalies:
        recvs = [e for e in ev if e["ev"] == "recv" and e["user"] != e["sender"]]
        dup = dict(recvs[5])
        dup["t"] += 0.5
        ev.append(dup)
        a, b = recvs[40], next(e for e in recvs[41:] if e["user"] == recvs[40]["user"])
        a["t"], b["t"] = b["t"], a["t"]
    if fault is not None:
        ev.append(
            {
                "t": T0 + fault[2],
                "ev": "fault",
                "kind": fault[0],
                "target": fault[1],
                "start": T0 + fault[2],
                "end": T0 + fault[3],
            }
        )
    ev.sort(key=lambda e: e["t"])
    params: dict[str, Any] = {
        "users": users,
        "rate": rate,
        "duration": duration,
        "group_size": group_size,
    }
    if kind == "sim":
        params["seed"] = seed
    manifest: dict[str, Any] = {
        "stage": stage,
        "scenario": scenario,
        "kind": kind,
        "params": params,
        "started_at": T0,
        "ended_at": T0 + duration,
        "drain_end": T0 + duration + 3.0,
        "groups": groups,
        "faults": []
        if fault is None
        else [{"kind": fault[0], "target": fault[1], "start": T0 + fault[2], "end": T0 + fault[3]}],
        "machine": {"cpus": 2},
        "versions": {"imlab": "0.1.0"},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "history-0.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    return run


# --------------------------------------------------------------------------- the report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Names that contain digits but are not numbers: stages, percentiles, the seed's sections.
NAME_TOKENS = re.compile(r"\bv\d+\b|\bp\d+(?:\.\d+)?\b|§\d\b")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Report:
    root = tmp_path_factory.mktemp("runs")
    common: dict[str, Any] = {"users": 16, "rate": 2.0, "duration": 16.0}
    make_run(root, "v1-group", stage="v1", refuse_all="unsupported", **common)
    make_run(root, "v2-group", stage="v2", base_ms=4.0, **common)
    make_run(root, "v2-group-sim", stage="v2", kind="sim", base_ms=3.0, **common)
    make_run(root, "v3-group", stage="v3", base_ms=12.0, **common)
    make_run(
        root,
        "v3-group-broker",
        stage="v3",
        base_ms=12.0,
        fault=("broker-down", "kafka", 6.0, 9.0),
        effect="lose",
        anomalies=True,
        **common,
    )
    return build_report([root], tmp_path_factory.mktemp("report"))


def metrics_of(report: Report) -> dict[str, dict[str, Any]]:
    return {
        r.rid: json.loads((r.path / "metrics.json").read_text(encoding="utf-8"))
        for r in report.runs
    }


def resolve(metrics: dict[str, Any], key: str) -> Any:
    """The value at a key path like `series.lost[3]`, written independently of the report."""
    node: Any = metrics
    for part in key.split("."):
        name, *indices = part.split("[")
        node = node[name]
        for index in indices:
            node = node[int(index.rstrip("]"))]
    return node


def parse_back(text: str) -> float | None:
    return None if text == "n/a" else float(text.replace(",", ""))


def assert_same_number(text: str, value: Any, where: str) -> None:
    """The printed text is fmt(value), and reads back as the value to the digits shown."""
    assert text == fmt(value), where
    shown = parse_back(text)
    if value is None:
        assert shown is None, where
        return
    assert shown is not None, where
    tolerance = 0.5 * 10 ** -decimals(float(value)) if isinstance(value, float) else 0
    assert math.isclose(shown, value, abs_tol=tolerance + 1e-9), where


@dataclass
class Page(HTMLParser):
    """The numbers (tagged spans), images, links, captions and table of a report page."""

    numbers: list[tuple[dict[str, str], str]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    _span: dict[str, str] | None = None
    _text: list[str] = field(default_factory=list)
    _in: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "span" and a.get("class") in ("n", "c", "g"):
            self._span, self._text = a, []
        if tag in ("img", "script", "link", "iframe", "source"):
            self.images.append(a.get("src", "")) if tag == "img" else self.links.append(tag)
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "figcaption":
            self._in.append("caption")
            self.captions.append("")
        if tag == "table" and a.get("class") == "main":
            self._in.append("table")
        if tag == "tr" and "table" in self._in:
            self.table.append([])
        if tag == "td" and "table" in self._in:
            self.table[-1].append("")
        if tag == "b" and "caption" in self._in:
            self._in.append("title")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._span is not None:
            self.numbers.append((self._span, "".join(self._text)))
            self._span = None
        for t, name in (("figcaption", "caption"), ("table", "table"), ("b", "title")):
            if tag == t and name in self._in:
                self._in.remove(name)

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            self._text.append(data)
        if "title" in self._in:
            return
        if "caption" in self._in:
            self.captions[-1] += data
        if "table" in self._in and self.table and self.table[-1]:
            self.table[-1][-1] += data


def page_of(report: Report) -> tuple[str, Page]:
    text = report.html.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def test_every_number_in_the_page_is_the_one_in_metrics_json(built: Report) -> None:
    assert check_every_number(built) > 100


def check_every_number(report: Report) -> int:
    """Every tagged number of the page is the value it names (a key of a run's
    metrics.json, a calculation on such keys, or a key of a summary file such as a
    capacity.json) and no other digit is printed; returns how many were checked."""
    text, page = page_of(report)
    metrics = metrics_of(report)
    for attrs, shown in page.numbers:
        if attrs["class"] == "n":
            where = f"{attrs['data-run']}:{attrs['data-key']}"
            assert_same_number(shown, resolve(metrics[attrs["data-run"]], attrs["data-key"]), where)
        elif attrs["class"] == "g":
            given = json.loads(Path(attrs["data-file"]).read_text(encoding="utf-8"))
            where = f"{attrs['data-file']}:{attrs['data-key']}"
            assert_same_number(shown, resolve(given, attrs["data-key"]), where)
        else:
            args = [resolve(metrics[run], key) for run, key in json.loads(attrs["data-args"])]
            op = attrs["data-op"]
            if op == "ratio":
                value: Any = args[0] / args[1]
            elif op == "sum":
                value = sum(args)
            else:
                value = math.prod(args)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            assert_same_number(shown, value, f"{op} of {attrs['data-args']}")
    # Nothing else in the page is a number: drop styles, identifiers and tagged numbers,
    # then names like v2 or p99, and no digit may remain.
    rest = re.sub(r"<style>.*?</style>", " ", text, flags=re.S)
    rest = re.sub(r"<code>.*?</code>", " ", rest, flags=re.S)
    rest = re.sub(r'<span class="[ncg]"[^>]*>.*?</span>', " ", rest, flags=re.S)
    rest = html.unescape(re.sub(r"<[^>]+>", " ", rest))
    leftover = re.findall(r"\S*\d\S*", NAME_TOKENS.sub(" ", rest))
    assert leftover == []
    return len(page.numbers)


def md_table(summary: str) -> list[list[str]]:
    lines = [ln for ln in summary.splitlines() if ln.startswith("| ")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert rows[0] == [h for h, _cell in COLUMNS]
    return rows[2:]


def test_summary_md_prints_the_same_numbers(built: Report) -> None:
    summary = built.summary.read_text(encoding="utf-8")
    _text, page = page_of(built)
    rows = md_table(summary)
    html_rows = [r for r in page.table if r]
    assert len(rows) == len(html_rows) == len(built.runs)
    for md_row, html_row in zip(rows, html_rows, strict=True):
        assert [c.strip("`") for c in md_row] == [c.strip() for c in html_row]
    # Spot checks straight against metrics.json, by column name.
    metrics = metrics_of(built)
    col = {h: i for i, (h, _cell) in enumerate(COLUMNS)}
    for row in rows:
        m = metrics[row[col["run"]].strip("`")]
        assert_same_number(row[col["lost"]], m["deliveries"]["lost"], "lost")
        assert_same_number(row[col["sends ok"]], m["sends"]["acked_ok"], "sends ok")
        assert_same_number(row[col["p99 ms"]], m["latency_ms"]["push"]["p99"], "p99")
        assert_same_number(
            row[col["accepted sends/s"]], m["throughput"]["accepted_sends_per_s"], "tput"
        )
        order = sum(
            m["anomalies"][k] for k in ("seq_backwards", "order_disagreements", "fifo_violations")
        )
        assert_same_number(row[col["order anomalies"]], order, "order")
    # Every caption of the page is in summary.md word for word.
    for caption in page.captions:
        assert caption in summary


def test_images_exist_and_are_pngs(built: Report) -> None:
    _text, page = page_of(built)
    assert sorted(page.images) == sorted(p.name for p in built.images)
    names = {Path(src).stem.split("-")[0] for src in page.images}
    assert {"arch", "latency", "throughput", "anomalies", "timeseries", "sim"} <= names
    for src in page.images:
        path = built.out / src
        assert path.read_bytes()[:8] == PNG_SIGNATURE, src
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, src


def test_page_needs_no_network(built: Report) -> None:
    text, page = page_of(built)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, flags=re.I)
    assert all(link.startswith("#") for link in page.links)
    assert all("/" not in src and ":" not in src for src in page.images)


def caption(report: Report, title_start: str) -> str:
    found = [i for i in report.items if isinstance(i, Figure) and i.title.startswith(title_start)]
    assert found, title_start
    return plain(found[0].caption)


def test_sentences_state_the_figures(built: Report) -> None:
    m = metrics_of(built)
    broker = m["v3-group-broker"]
    assert broker["deliveries"]["lost"] > 0
    text = caption(built, "Loss, duplicates and ordering: group")
    lost, expected = fmt(broker["deliveries"]["lost"]), fmt(broker["deliveries"]["expected"])
    assert f"Under broker-down: v3 lost {lost} of {expected} expected deliveries" in text
    assert "No v4 run for this scenario." in text
    dup = fmt(broker["anomalies"]["duplicated"])
    assert f"v3 under broker-down, duplicated deliveries: {dup}" in text

    text = caption(built, "Push latency: group")
    v2, v3 = m["v2-group"]["latency_ms"]["push"], m["v3-group"]["latency_ms"]["push"]
    assert f"v2 {fmt(v2['p50'])} / {fmt(v2['p99'])}" in text
    assert f"v3 {fmt(v3['p50'])} / {fmt(v3['p99'])}" in text
    assert f"v3's p99 is {fmt(v3['p99'] / v2['p99'])}x v2's." in text
    refused = fmt(m["v1-group"]["sends"]["acked_error"])
    assert f"v1 delivered nothing by push (0 sends acked ok, {refused} refused" in text

    text = caption(built, "Around the fault: broker-down, group (real)")
    series = broker["series"]
    window = [i for i, t in enumerate(series["t"]) if 6 <= t < 9]
    in_window = fmt(sum(series["lost"][i] for i in window))
    assert "v3: broker-down from 6 s to 9 s" in text
    assert f"{in_window} deliveries of messages sent in the window were lost" in text

    text = caption(built, "Simulated vs real")
    sim, real = m["v2-group-sim"]["latency_ms"]["push"], m["v2-group"]["latency_ms"]["push"]
    assert f"simulated p50 {fmt(sim['p50'])} ms vs real {fmt(real['p50'])} ms" in text


def test_latency_sample_is_the_checkers(built: Report) -> None:
    """The CDFs are drawn from the very sample behind latency_ms.push in metrics.json."""
    m = metrics_of(built)
    drawn = [r for r in built.runs if r.latencies_ms is not None]
    assert {r.rid for r in drawn} == {"v2-group", "v2-group-sim", "v3-group", "v3-group-broker"}
    for r in drawn:
        sample = push_latencies_ms(r.path)
        push = m[r.rid]["latency_ms"]["push"]
        assert sample.size == push["count"]
        for key, permille in (("p50", 500), ("p99", 990)):
            assert round(float(sample[rank_index(sample.size, permille)]), 3) == push[key]


def test_missing_data_is_said(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs", "only-v2", stage="v2", users=8, rate=1.0, duration=6.0)
    report = build_report([run], tmp_path / "out")
    summary = report.summary.read_text(encoding="utf-8")
    assert "No v1, v3 or v4 run for this scenario." in summary
    assert "No simulated run in this report, so nothing to compare." in summary
    assert "No run in this report had a timed fault window." in summary
    assert "Each stage ran at one load only" in summary


def test_unfinished_runs_are_skipped_and_named(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", "done", stage="v2", users=4, rate=1.0, duration=4.0)
    aborted = tmp_path / "runs" / "aborted"
    aborted.mkdir()
    (aborted / "history-setup.jsonl").write_text('{"t": 1.0, "ev": "connect", "user": "a"}\n')
    report = build_report([tmp_path / "runs"], tmp_path / "out")
    assert [r.rid for r in report.runs] == ["done"]
    assert report.skipped == [aborted]
    assert f"`{aborted}`" in report.summary.read_text(encoding="utf-8")


def test_runs_without_metrics_are_checked_first(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs", "fresh", stage="v2", users=4, rate=1.0, duration=4.0)
    assert not (run / "metrics.json").exists()
    build_report([run], tmp_path / "out")
    assert json.loads((run / "metrics.json").read_text())["run"]["stage"] == "v2"


def test_cli_builds_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "runs", "cli", stage="v2", users=4, rate=1.0, duration=4.0)
    parser = argparse.ArgumentParser(prog="imlab")
    register(parser.add_subparsers())
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| `cli` | real | v2 |" in out
    assert (tmp_path / "out" / "index.html").exists()
    args = parser.parse_args(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert args.func(args) == 2


def test_fmt() -> None:
    assert [fmt(v) for v in (None, True, 0, 4800, 12345678)] == [
        "n/a",
        "yes",
        "0",
        "4,800",
        "12,345,678",
    ]
    floats = (0.0, 2.0, 2.5, 3.14159, 12.345, 99.96, 142.357, 4321.5, 0.0123456, -1.5)
    assert [fmt(v) for v in floats] == [
        "0",
        "2",
        "2.5",
        "3.14",
        "12.3",
        "100",
        "142",
        "4,322",
        "0.0123",
        "-1.5",
    ]


def test_architecture_descriptions_hold_together() -> None:
    for stage, arch in ARCHITECTURES.items():
        ids = {n.id for n in arch.nodes}
        assert len(ids) == len(arch.nodes), stage
        for e in arch.edges:
            assert e.src in ids and e.dst in ids, (stage, e)
        steps = [e.step for e in arch.path()]
        assert steps == list(range(1, len(steps) + 1)), stage  # every step its own number
        text = markdown(arch)
        assert all(n.label in text for n in arch.nodes)
        assert arch.open_problem in text
        assert stages.stage(stage).seed_ref == f"seed §{arch.seed_section}", stage


CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def test_no_cjk_in_the_page_the_summary_or_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI has no CJK font: a Chinese numeral would render as an empty box, in the HTML
    text and in a PNG alike. The seed's sections show as `seed §N`."""
    drawn: list[str] = []
    draw = matplotlib.text.Text.draw

    def recording(self: matplotlib.text.Text, renderer: Any) -> None:
        drawn.append(self.get_text())
        draw(self, renderer)

    monkeypatch.setattr(matplotlib.text.Text, "draw", recording)
    common: dict[str, Any] = {"users": 8, "rate": 2.0, "duration": 8.0}
    make_run(tmp_path / "runs", "v2-group", stage="v2", **common)
    make_run(tmp_path / "runs", "v3-group", stage="v3", **common)
    report = build_report([tmp_path / "runs"], tmp_path / "report")
    page = report.html.read_text(encoding="utf-8")
    summary = (report.out / "summary.md").read_text(encoding="utf-8")
    assert "seed §2" in page and "seed §5" in page
    assert any("v4" in t for t in drawn), "the figures' text was not recorded"
    texts = [("index.html", page), ("summary.md", summary), *[("a PNG", t) for t in drawn]]
    for where, text in texts:
        assert not CJK.search(text), f"CJK in {where}: {text[:200]!r}"


def test_v4_broker_loss_is_explained_as_pushes_recovered_by_sync(tmp_path: Path) -> None:
    """v3 stores after Kafka and loses; v4 stored before publishing and syncs back:
    the caption says so for v4, with the sync count from its metrics.json."""
    common: dict[str, Any] = {"users": 16, "rate": 2.0, "duration": 12.0}
    fault = ("broker-down", "kafka", 4.0, 7.0)
    make_run(tmp_path / "runs", "v3-broker", stage="v3", fault=fault, effect="lose", **common)
    make_run(tmp_path / "runs", "v4-broker", stage="v4", fault=fault, effect="sync", **common)
    built = build_report([tmp_path / "runs"], tmp_path / "report")
    m = metrics_of(built)
    text = caption(built, "Loss, duplicates and ordering: group")
    synced = fmt(m["v4-broker"]["deliveries"]["sync"])
    assert m["v4-broker"]["deliveries"]["lost"] == 0 and m["v3-broker"]["deliveries"]["lost"] > 0
    assert (
        "v4 stores each message before it publishes it, so what Kafka lost cost pushes, "
        f"not messages: {synced} deliveries came by sync." in text
    )
    assert "v3 stores" not in text


def test_fault_captions_compare_like_with_like(tmp_path: Path) -> None:
    """A fault open from the run's first second has no second before it to compare with,
    so the caption gives the range (never "held at 0/s or more (0/s the second before)");
    a crash open to the end is judged on the seconds that had sends, not dated to the end
    of the send window; the Runs section spells parameters, with no None or raw dict."""
    common: dict[str, Any] = {"users": 16, "rate": 2.0, "duration": 8.0}
    churn = ("churn", "clients", 0.0, 8.0)
    make_run(tmp_path / "runs", "v2-churn", stage="v2", fault=churn, effect="lose", **common)
    crash = ("crash", "gateway-1", 3.0, 11.0)  # to the drain's end, as a crash is recorded
    make_run(tmp_path / "runs", "v4-crash", stage="v4", fault=crash, effect="sync", **common)
    built = build_report([tmp_path / "runs"], tmp_path / "report")
    m = metrics_of(built)

    text = caption(built, "Around the fault: churn, group (real)")
    ok = m["v2-churn"]["series"]["acked_ok"]
    sending = [k for k, n in enumerate(m["v2-churn"]["series"]["sends"]) if n]
    low, high = fmt(min(ok[k] for k in sending)), fmt(max(ok[k] for k in sending))
    assert "v2: churn from 0 s to 8 s" in text
    assert f"accepted sends ranged from {low}/s to {high}/s (" in text
    assert "held at" not in text and "/s the second before)" not in text

    text = caption(built, "Around the fault: crash, group (real)")
    series = m["v4-crash"]["series"]
    last_send = max(k for k, n in enumerate(series["sends"]) if n)
    assert "v4: crash from 3 s to 11 s" in text
    assert "held at" in text and "fell to 0/s" not in text
    assert f"in second {fmt(series['t'][last_send + 1])}" not in text

    page = built.html.read_text(encoding="utf-8")
    runs = page[page.index('<section id="runs">') :]
    assert "None" not in runs and "{'" not in runs and "nan" not in runs


def test_twins_pair_despite_kind_specific_settings_and_findings_lead(tmp_path: Path) -> None:
    """A real run and its simulated twin differ in settings only one kind has or that do
    not shape the workload (the drain cap, Locust's processes); they still pair, and the
    findings at the top of the page say how far the model is, with the commit."""
    common: dict[str, Any] = {"users": 16, "rate": 2.0, "duration": 8.0}
    real = make_run(tmp_path / "runs", "v2-real", stage="v2", **common)
    sim = make_run(tmp_path / "runs", "v2-sim", stage="v2", kind="sim", base_ms=3.0, **common)
    for run, extra in ((real, {"max_drain": 10.0, "processes": 2}), (sim, {"max_drain": 30.0})):
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["params"].update(extra)
        (run / "manifest.json").write_text(json.dumps(manifest))
    built = build_report([tmp_path / "runs"], tmp_path / "report")
    assert "Simulated vs real" in [i.title for i in built.items if isinstance(i, Figure)]
    page = built.html.read_text(encoding="utf-8")
    assert page.index('<section id="findings">') < page.index('<section id="table">')
    summary = built.summary.read_text(encoding="utf-8")
    findings = summary[summary.index("## Findings") : summary.index("## Main table")]
    assert "code at commit `" in findings
    assert "Model vs real, v2, over its twin pairs: simulated p50 " in findings
    assert "Scenario group: v2 kept up at every load tried" in findings


def test_a_stage_that_saturates_shows_its_knee(tmp_path: Path) -> None:
    """Three loads, the last beyond the stage's capacity: the throughput caption and the
    findings name the last load it kept up with and the one it fell behind at."""
    for rate in (1.0, 2.0, 4.0):
        make_run(tmp_path / "runs", f"v3-r{rate:g}", stage="v3", users=16, rate=rate,
                 duration=8.0, capacity=40.0)  # fmt: skip
    built = build_report([tmp_path / "runs"], tmp_path / "report")
    m = metrics_of(built)
    accepted = fmt(m["v3-r4"]["throughput"]["accepted_sends_per_s"])
    expected = f"v3 kept up to 32 sends/s and fell behind at 64 (accepted {accepted}/s)"
    assert expected in caption(built, "Throughput vs offered load: group")
    summary = built.summary.read_text(encoding="utf-8")
    assert f"Scenario group: {expected}." in summary
