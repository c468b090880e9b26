"""The reports' page builder (core/html_report.py): self-contained, escaped, written whole."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from core.html_report import Report, new_figure


def test_data_is_escaped_and_numbers_are_formatted(tmp_path: Path) -> None:
    r = Report("a <b>title</b>")
    r.section("corpus").table(["file", "chunks", "score"], [("<script>alert(1)</script>.md", 4510, 0.83456789)])
    r.bullets(["reason with <img src=x onerror=alert(1)>"])
    page = r.write(tmp_path / "r.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.md" in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert '<td class="num">4,510</td>' in page and '<td class="num">0.8346</td>' in page
    assert page.count("<section") == page.count("</section>") == 1


def test_figures_are_embedded_pngs_and_nothing_is_fetched(tmp_path: Path) -> None:
    fig, ax = new_figure()
    ax.plot([1, 2, 3], [3, 1, 2])
    page = Report("plots").section("one").figure(fig, "a line").html()
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert data and base64.b64decode(data.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_a_markdown_report_becomes_sections_and_tables() -> None:
    md = "## Chat\n\n| workload | ours | peer |\n|---|---|---|\n| 1 stream | 15.9 | 105.5 |\n\nsome note\n"
    page = Report("bench").markdown_table(md).html()
    assert "<h2>Chat</h2>" in page and "<th>workload</th>" in page and "<td>1 stream</td>" in page
    assert "---" not in page and "<p>some note</p>" in page
