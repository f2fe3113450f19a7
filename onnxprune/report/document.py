"""One report, four renderings: a document of blocks written as terminal text, Markdown or a self-contained HTML page.

A report is built once as a list of blocks (headings, paragraphs, items,
tables, figures); :func:`text`, :func:`markdown` and :func:`html_page` only
lay them out, so the terminal, the ``.md`` file and the ``.html`` page hold
the same content (JSON is the report's ``to_dict``). Figures are PNG bytes:
the HTML page embeds them as base64 data URIs (one file to mail or attach),
the Markdown links them when they were written beside it, and the terminal
leaves them out.
"""

from __future__ import annotations

import base64
import html as _html
from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Items:
    """Short lines that belong together (fidelity rows, notes): plain lines on a terminal, a list elsewhere."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """Rows of cells, the first the header; the first column reads left-aligned, the others right-aligned."""

    rows: tuple[tuple[str, ...], ...]
    caption: Optional[str] = None


@dataclass(frozen=True)
class Figure:
    """A plot: PNG bytes, what it shows (the caption), and the file name it has when written beside a report."""

    png: bytes
    caption: str
    name: str


Block = Union[Heading, Para, Items, Table, Figure]


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Optional[Block]) -> "Document":
        self.blocks += [b for b in blocks if b is not None]
        return self


def table(rows: list) -> Table:
    return Table(tuple(tuple(str(c) for c in r) for r in rows))


def pipe_rows(text: str) -> Table:
    """A Markdown pipe table (as :func:`onnxprune.report.compare.variants_table` writes it) as a Table."""
    rows = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):
            rows.append(tuple(cells))
    return Table(tuple(rows))


def columns(rows: tuple[tuple[str, ...], ...]) -> str:
    """Rows as aligned text columns under a dashed rule (the terminal's tables)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def text(doc: Document, title: bool = False) -> str:
    """The terminal's rendering: aligned tables, plain lines, no figures (their data is in the tables)."""
    out = [doc.title] if title and doc.title else []
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Items):
            out += list(b.lines)
        elif isinstance(b, Table):
            out.append(columns(b.rows))
    return "\n".join(out)


def markdown(doc: Document, figures: bool = True) -> str:
    """Markdown; figures are linked by their file name (``figures=False`` when none was written beside it)."""
    out = [f"# {doc.title}", ""] if doc.title else []
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Items):
            out += [f"- {line.strip()}" for line in b.lines] + [""]
        elif isinstance(b, Table):
            rows = b.rows
            out += [_md_row(rows[0]), "|" + "---|" * len(rows[0])] + [_md_row(r) for r in rows[1:]]
            out += ([f"*{b.caption}*"] if b.caption else []) + [""]
        elif isinstance(b, Figure) and figures:
            out += [f"![{b.caption}]({b.name})", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _md_row(cells: tuple[str, ...]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}caption{caption-side:bottom;"
          "text-align:left;font-size:90%;color:#555;padding-top:3px}figure{margin:1.5em 0}img{max-width:100%}"
          "figcaption{font-size:90%;color:#444;max-width:800px}ul{padding-left:1.2em}"
          ".note{background:#fff6d6;padding:.4em .8em;border-left:4px solid #e0b000}</style>")


def _table_html(t: Table) -> str:
    e = _html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t.rows[0])
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows[1:])
    cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(doc: Document) -> str:
    """One self-contained HTML page: every figure inline as a base64 PNG, no external URL."""
    e = _html.escape
    parts = []
    for b in doc.blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level + 0}>{e(b.text)}</h{b.level + 0}>")
        elif isinstance(b, Para):
            cls = " class='note'" if b.text.startswith("Note:") else ""
            parts.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Items):
            parts.append("<ul>" + "".join(f"<li>{e(line.strip())}</li>" for line in b.lines) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_table_html(b))
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode()
            parts.append(f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(doc.title)}</title>{_STYLE}</head>"
            f"<body><h1>{e(doc.title)}</h1>{''.join(parts)}</body></html>\n")
