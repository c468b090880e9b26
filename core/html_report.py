"""One look for the reports a person opens in a browser: the pipeline report (`evaluation/report.py`, written by
`dvc repro`) and the benchmark reports (`benchmarks/peers_report.publish`).

A report is one self-contained HTML file: inline CSS, figures drawn with matplotlib and embedded as PNG (base64),
tables built from rows. No script and nothing fetched, so it opens offline, from a CI artifact or an e-mail, and
looks the same everywhere. Every text is escaped: corpus paths and model output cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from core.io import atomic_write

CSS = """
:root { --ink:#1d2430; --muted:#5d6878; --line:#d9dee6; --wash:#f4f6f9; --accent:#2457c5; --good:#1b7f4b;
  --bad:#b42318; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--wash); }
body { max-width: 1060px; margin: 0 auto; padding: 20px 24px 60px; }
h1 { font-size: 1.5rem; margin: 0 0 4px; } h2 { font-size: 1.15rem; margin: 0 0 10px; }
.subtitle { color: var(--muted); margin: 0 0 16px; font-size: 0.9rem; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin: 14px 0; }
section > p, section > ul { font-size: 0.92rem; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.85rem; }
caption { text-align: left; color: var(--muted); font-size: 0.8rem; padding-bottom: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--wash); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
figure { margin: 8px 0 14px; } figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.8rem; }
.pass { color: var(--good); font-weight: 600; } .fail { color: var(--bad); font-weight: 600; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 4px 0 10px; }
.stat { background: var(--wash); border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.stat b { display: block; font-size: 1.25rem; } .stat span { color: var(--muted); font-size: 0.78rem; }
"""

Cell = str | int | float | None


def cell(value: Cell, digits: int = 4) -> tuple[str, bool]:
    """A table cell's text, and whether it is a number (right-aligned)."""
    if value is None:
        return "–", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        return f"{value:.{digits}f}", True
    return str(value), False


def verdict(passed: bool, text: str) -> str:
    """Inline HTML for a gate's outcome, coloured (pass green, fail red)."""
    return f'<span class="{"pass" if passed else "fail"}">{html.escape(text)}</span>'


class Report:
    """A page built top to bottom: `section`, then its `paragraph`s, `stats`, `table`s and `figure`s."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []
        self._open = False

    def section(self, title: str, anchor: str | None = None) -> Report:
        self._close()
        anchor_attr = f' id="{html.escape(anchor)}"' if anchor else ""
        self._parts.append(f"<section{anchor_attr}><h2>{html.escape(title)}</h2>")
        self._open = True
        return self

    def paragraph(self, text: str, raw: bool = False) -> Report:
        """A paragraph; `raw` only for markup this code made (e.g. `verdict`), never for data."""
        self._parts.append(f"<p>{text if raw else html.escape(text)}</p>")
        return self

    def bullets(self, items: Iterable[str]) -> Report:
        self._parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        return self

    def stats(self, figures: Sequence[tuple[str, Cell]]) -> Report:
        """Headline figures as tiles: (label, value)."""
        tiles = "".join(
            f'<div class="stat"><b>{html.escape(cell(v, 2)[0])}</b><span>{html.escape(k)}</span></div>'
            for k, v in figures
        )
        self._parts.append(f'<div class="stats">{tiles}</div>')
        return self

    def table(
        self, header: Sequence[str], rows: Iterable[Sequence[Cell]], caption: str = "", digits: int = 4
    ) -> Report:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = []
        for row in rows:
            tds = []
            for value in row:
                text, numeric = cell(value, digits)
                tds.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def figure(self, fig: Figure, caption: str = "", dpi: int = 110) -> Report:
        """Embed a matplotlib figure as a PNG."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return self._png(buf.getvalue(), caption)

    def image(self, path: Path, caption: str = "") -> Report:
        """Embed a PNG file (a plot another tool saved)."""
        return self._png(path.read_bytes(), caption)

    def _png(self, png: bytes, caption: str) -> Report:
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption)
        cap = f"<figcaption>{alt}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>')
        return self

    def markdown_table(self, text: str) -> Report:
        """A report's markdown (`| a | b |` tables, `#` headings, other lines as paragraphs), in this look."""
        rows: list[list[str]] = []
        if not self._open and not text.lstrip().startswith("#"):
            self.section("Results")

        def flush() -> None:
            if rows:
                self.table(rows[0], rows[1:])
                rows.clear()

        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("|"):
                cells = [c.strip() for c in stripped.strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):  # not the |---| separator
                    rows.append(cells)
                continue
            flush()
            if stripped.startswith("#"):
                self.section(stripped.lstrip("#").strip())
            elif stripped:
                self.paragraph(stripped)
        flush()
        return self

    def html(self) -> str:
        self._close()
        sub = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><h1>{html.escape(self.title)}</h1>{sub}{''.join(self._parts)}</body></html>\n"
        )

    def write(self, path: Path) -> Path:
        """Write the page atomically (a failed run never leaves half a report)."""
        page = self.html()
        atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        return path

    def _close(self) -> None:
        if self._open:
            self._parts.append("</section>")
            self._open = False


def new_figure(width: float = 6.4, height: float = 3.6, cols: int = 1) -> tuple[Figure, Any]:
    """A figure with `cols` axes side by side (no pyplot: no global state, no display backend)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, cols)
    return fig, axes
