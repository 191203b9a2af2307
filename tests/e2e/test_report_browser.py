"""The report as a reader sees it, in headless Chromium at 1280 px: every image loads,
nothing overflows the page width, and no caption or run detail prints `None`, `nan` or
a raw Python dict.

The page itself has no scripts; the test loads a copy of it with one inline script
that, once the page and its images have loaded, writes what it measured into the DOM,
and reads it back from Chromium's `--dump-dom`. The runs are small simulated ones
(`imlab sim`), so the whole test takes seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1280

# The runs: (name, imlab sim arguments). A fault-free load curve, and a fault per stage.
RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("v1-dm-churn", ("--stage", "v1", "--scenario", "dm", "--faults", "churn:0.5")),
    ("v2-group-r1", ("--stage", "v2", "--rate", "1")),
    ("v2-group-r2", ("--stage", "v2", "--rate", "2")),
    ("v2-group-outage", ("--stage", "v2", "--rate", "2", "--faults", "redis-outage:1.5s@2s")),
    ("v4-group-crash", ("--stage", "v4", "--rate", "2", "--faults", "crash:gateway-1@2s")),
)

PROBE = """<script>
window.addEventListener("load", () => {
  const table = document.querySelector("table.main");
  const found = {
    images: [...document.images].map(i => [i.getAttribute("src"), i.complete ? i.naturalWidth : 0]),
    pageWidth: document.documentElement.scrollWidth,
    tableWidth: table ? table.scrollWidth : -1,
    tableRoom: table ? table.parentElement.clientWidth : -1,
    texts: [...document.querySelectorAll("figcaption, dl.run, p.note, table.main")]
      .map(e => e.innerText),
    pageText: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def imlab(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "imlab_app.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"imlab {' '.join(args)}:\n{proc.stdout[-2000:]}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    for name, args in RUNS:
        common = ("--users", "12", "--duration", "5", "--quiet", "--run-dir", str(root / name))
        imlab("sim", *args, *common)
    imlab("report", *(str(root / name) for name, _a in RUNS), "--out", str(root / "report"))
    return root / "report"


def measure(report: Path) -> dict[str, Any]:
    """Open the report (a probing copy of it) in headless Chromium; what the probe found."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: this test needs Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    page = (report / "index.html").read_text(encoding="utf-8")
    probe = report / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="imlab-chromium-")
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--window-size={WIDTH},2000",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"the probe never ran; chromium said:\n{proc.stderr[-2000:]}"
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    result: dict[str, Any] = json.loads(text.replace("&amp;", "&"))
    return result


def test_report_reads_cleanly_in_chromium(report: Path) -> None:
    found = measure(report)
    images = found["images"]
    assert len(images) >= 8, images
    broken = [src for src, width in images if not width]
    assert broken == [], f"images that did not load: {broken}"
    assert found["pageWidth"] <= WIDTH, f"the page is {found['pageWidth']} px wide at {WIDTH}"
    assert found["tableWidth"] <= found["tableRoom"], (
        f"the main table needs {found['tableWidth']} px of {found['tableRoom']}: "
        "its last columns are hidden"
    )
    bad = re.compile(r"\bNone\b|\bnan\b|\{'|\{\"")
    texts = found["texts"]
    assert any("accepted sends" in t for t in texts), "no fault caption found"
    offending = [t for t in texts if bad.search(t)]
    assert offending == [], "captions with None, nan or a raw dict:\n" + "\n".join(offending)
    # CI has no CJK font: the seed's sections read `seed §N`, never a boxed numeral.
    cjk = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "seed §" in found["pageText"]
    for where, text in (("the page as shown", found["pageText"]), ("index.html", page)):
        hit = cjk.search(text)
        assert not hit, f"CJK in {where}: {text[max(0, hit.start() - 80) : hit.end() + 80]!r}"
