"""The report page as one self-contained HTML document: inline CSS, no scripts, no
external URLs; images are PNG files beside it, referenced by relative name."""

from __future__ import annotations

import html
from collections.abc import Sequence

from reports.figures import Figure, Note
from reports.numbers import Text, to_html

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; }
h1 { margin: 28px 0 4px; }
h2 { margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav a { margin-right: 14px; }
figure { margin: 24px 0 32px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { max-width: 920px; margin-top: 6px; }
figcaption b { display: block; margin-bottom: 2px; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 12px 0; }
th, td { padding: 3px 5px; border-bottom: 1px solid #e4e4e4; text-align: right;
         white-space: nowrap; }
th { background: #f5f5f5; position: sticky; top: 0; white-space: normal;
     vertical-align: bottom; min-width: 3.2em; }
td.t, th.t { text-align: left; }
/* The run's folder name breaks at its hyphens, so every number column fits 1280 px. */
table.main td:first-child { white-space: normal; max-width: 14em; }
table.main td:first-child code { font-size: 11px; }
code { font-size: 12px; background: #f4f4f4; padding: 0 3px; border-radius: 3px; }
.note { color: #8a5a00; background: #fff7e6; padding: 6px 10px; border-radius: 4px; }
.run { margin: 10px 0 18px; }
.run dt { font-weight: bold; }
.run dd { margin: 0 0 0 16px; }
"""


def table(headers: Sequence[str], rows: Sequence[Sequence[Text]], text_cols: int) -> str:
    """A table; the first `text_cols` columns are left-aligned text, the rest numbers."""

    def cls(i: int) -> str:
        return ' class="t"' if i < text_cols else ""

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{to_html(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="wide"><table class="main">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table></div>"
    )


def figure(fig: Figure) -> str:
    return (
        f'<figure id="{html.escape(fig.file.removesuffix(".png"))}">'
        f'<img src="{html.escape(fig.file)}" alt="{html.escape(fig.title)}">'
        f"<figcaption><b>{html.escape(fig.title)}</b>{to_html(fig.caption)}</figcaption>"
        "</figure>"
    )


def note(n: Note) -> str:
    return f'<p class="note">{to_html(n.text)}</p>'


def bullets(items: Sequence[Text]) -> str:
    return '<ul class="findings">' + "".join(f"<li>{to_html(t)}</li>" for t in items) + "</ul>"


def paragraph(text: Text) -> str:
    return f"<p>{to_html(text)}</p>"


def section(anchor: str, title: str, parts: Sequence[str]) -> str:
    body = "\n".join(parts)
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def document(title: str, intro: Text, nav: Sequence[tuple[str, str]], body: Sequence[str]) -> str:
    links = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{to_html(intro)}</p>\n<nav>{links}</nav>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
