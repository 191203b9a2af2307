"""`imlab report RUN_FOLDER... --out DIR`: build the comparison report and print its main
table; run folders without a metrics.json are checked first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reports.report import build_report, markdown_table


def cmd_report(args: argparse.Namespace) -> int:
    try:
        report = build_report(args.runs, args.out)
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"imlab report: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(report.runs))
    print()
    for path in report.skipped:
        print(f"skipped {path}: histories but no manifest.json (an unfinished run?)")
    print(f"report: {report.html}")
    print(f"summary: {report.summary} ({len(report.images)} figures beside it)")
    return 0


def register(subparsers: Any) -> None:
    """Add the `report` subcommand to the `imlab` command."""
    p = subparsers.add_parser(
        "report",
        help="build the HTML comparison report and summary.md from run folders",
        description=(
            "Build a self-contained HTML report (index.html, PNG figures) and summary.md "
            "from run folders of `imlab load` or `imlab sim`. A folder holding run folders "
            "(such as runs/) stands for all of them."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_FOLDER")
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (./report)")
    p.set_defaults(func=cmd_report)
