"""DVC stage `python -m data.ingest`: a folder of documents -> `documents.parquet` + an ingest report.

Markdown and plain text are read as UTF-8, HTML through BeautifulSoup (headings kept as Markdown
`#` lines so the chunker can split on them), PDF through pypdf. Anything unreadable is skipped with a
reason in `ingest_report.json`; the stage fails only when nothing at all is readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import polars as pl

from core import paths
from core.config import IngestParams, params
from core.io import write_json, write_parquet
from core.log import get_logger

log = get_logger(__name__)

_FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}
# Human wording of each skip reason, used in the report and in the IngestError message.
REASONS = {
    "hidden": "hidden",
    "unsupported": "unsupported extension",
    "empty": "empty",
    "too_large": "too large",
    "binary": "binary",
    "not_utf8": "not UTF-8",
    "unreadable": "unreadable",
    "duplicate": "duplicate",
}
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# Block elements end a paragraph (blank line) or a line; inline ones (a, em, code) flow into the text.
_HTML_PARAGRAPHS = ("p", "pre", "blockquote", "section", "article", "ul", "ol", "dl", "table", "div")
_HTML_LINES = ("li", "br", "tr", "dt", "dd")

SCHEMA = {"doc_id": pl.String, "source": pl.String, "title": pl.String, "text": pl.String, "metadata": pl.String}


class IngestError(ValueError):
    """The corpus folder is missing or yields no documents; the message lists what was skipped and why."""


class _Skip(Exception):
    """Raised by a reader: this file is skipped for `reason` (a key of `REASONS`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


# ---- text -----------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Unicode NFC, `\\n` line ends, no trailing spaces, at most one blank line in a row, no outer blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def doc_id_of(text: str) -> str:
    """First 16 hex characters of the sha256 of the normalised text: equal texts share an id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def first_heading(text: str) -> str | None:
    """The first level-1 Markdown heading of `text`, if any."""
    m = _H1.search(text)
    return m.group(1).strip() if m else None


# ---- readers: bytes -> (text, html <title>) --------------------------------------------------------


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise _Skip("binary", "contains NUL bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Skip("not_utf8", f"byte {e.start}: {e.reason}; re-save the file as UTF-8") from None


def read_html(data: bytes) -> tuple[str, str | None]:
    """HTML to text with `<h1>`..`<h6>` as Markdown headings; returns (text, `<title>` or None)."""
    from bs4 import BeautifulSoup, NavigableString

    if b"\x00" in data:
        raise _Skip("binary", "contains NUL bytes")
    # bytes, not str: BeautifulSoup honours the document's declared charset.
    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    # Outside <pre>, newlines and indentation in the source are layout, not content.
    for node in soup.find_all(string=True):
        if type(node) is not NavigableString:  # comments, doctype, CDATA: not page text
            node.extract()
        elif node.find_parent("pre") is None:
            node.replace_with(re.sub(r"\s+", " ", str(node)))
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    for tag in soup.find_all(_HTML_PARAGRAPHS):
        tag.insert_after("\n\n")
    for tag in soup.find_all(_HTML_LINES):
        tag.insert_after("\n")
    lines = (line.strip(" \t\u00a0") for line in soup.get_text().split("\n"))
    return "\n".join(lines), title or None


def read_pdf(data: bytes) -> str:
    """Text of every page, pages separated by a blank line."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise _Skip("unreadable", f"pypdf: {e}") from None
    return "\n\n".join(pages)


def read_file(path: Path, cfg: IngestParams) -> tuple[str, str | None, str, int]:
    """Read one file into normalised text.

    Returns:
        (text, html title or None, format name, size in bytes).

    Raises:
        _Skip: the file is skipped; `reason` says why.
    """
    ext = path.suffix.lower()
    if ext not in cfg.extensions or ext not in _FORMATS:
        raise _Skip("unsupported", ext or "no extension")
    size = path.stat().st_size
    if size == 0:
        raise _Skip("empty")
    if size > cfg.max_file_mb * 1024 * 1024:
        raise _Skip("too_large", f"{size / 2**20:.1f} MiB > ingest.max_file_mb={cfg.max_file_mb}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Skip("unreadable", str(e)) from None
    fmt = _FORMATS[ext]
    title = None
    if fmt == "html":
        raw, title = read_html(data)
    elif fmt == "pdf":
        raw = read_pdf(data)
    else:
        raw = _decode(data)
    text = normalise(raw)
    if not text.strip():
        raise _Skip("empty", "no text after extraction" if fmt in ("html", "pdf") else "only whitespace")
    return text, title, fmt, size


# ---- the folder -----------------------------------------------------------------------------------


def _display(folder: Path) -> str:
    try:
        return folder.resolve().relative_to(paths.PROJECT_ROOT.resolve()).as_posix() + "/"
    except ValueError:
        return folder.as_posix()


def _walk(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Visible files under `root` sorted by relative path, and the hidden entries skipped."""
    files: list[Path] = []
    hidden: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        hidden += [(here / d).relative_to(root).as_posix() + "/" for d in dirnames if d.startswith(".")]
        hidden += [(here / f).relative_to(root).as_posix() for f in filenames if f.startswith(".")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune: never walk into .git/
        files += [here / f for f in filenames if not f.startswith(".")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files, [{"source": h, "reason": "hidden", "detail": ""} for h in hidden]


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {REASONS[r]}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def ingest(corpus_dir: Path, cfg: IngestParams) -> tuple[pl.DataFrame, dict[str, object]]:
    """Read every supported file under `corpus_dir` into one row per unique document.

    Args:
        corpus_dir: the folder to read recursively (`params().data.corpus_path()`).
        cfg: `params().data.ingest`: extensions to read, size limit.

    Returns:
        The documents (columns `doc_id, source, title, text, metadata`, sorted by `source`) and the
        report: counts read / skipped by reason and every skipped file with its reason.

    Raises:
        IngestError: the folder does not exist, or no file in it is readable.
    """
    corpus_dir = Path(corpus_dir)
    supported = ", ".join(cfg.extensions)
    if not corpus_dir.is_dir():
        what = "is not a folder" if corpus_dir.exists() else "does not exist"
        raise IngestError(
            f"corpus folder `{_display(corpus_dir)}` {what}: put your documents ({supported}) there or set "
            "data.corpus_dir in params.yaml; `python -m data.sample_corpus` writes the default corpus"
        )
    files, skipped = _walk(corpus_dir)
    rows: list[dict[str, str]] = []
    first_source: dict[str, str] = {}
    formats: Counter[str] = Counter()
    for path in files:
        source = path.relative_to(corpus_dir).as_posix()
        try:
            text, html_title, fmt, size = read_file(path, cfg)
        except _Skip as s:
            skipped.append({"source": source, "reason": s.reason, "detail": s.detail})
            continue
        doc_id = doc_id_of(text)
        if doc_id in first_source:
            skipped.append({"source": source, "reason": "duplicate", "detail": f"same text as {first_source[doc_id]}"})
            continue
        first_source[doc_id] = source
        formats[fmt] += 1
        meta = {"format": fmt, "bytes": size, "n_chars": len(text)}
        title = first_heading(text) or html_title or path.stem
        rows.append({"doc_id": doc_id, "source": source, "title": title, "text": text,
                     "metadata": json.dumps(meta, sort_keys=True)})  # fmt: skip
    skipped.sort(key=lambda s: s["source"])
    counts = Counter(s["reason"] for s in skipped)
    if not rows:
        detail = f" ({len(skipped)} skipped: {_summary(counts)})" if skipped else " (it is empty)"
        raise IngestError(
            f"corpus folder `{_display(corpus_dir)}` has no readable files{detail}; supported: {supported}"
        )
    df = pl.DataFrame(rows, schema=SCHEMA).sort("source")
    report: dict[str, object] = {
        "n_files": len(files),
        "n_read": len(rows),
        "n_skipped": len(skipped),
        "read_by_format": dict(sorted(formats.items())),
        "skipped_by_reason": dict(sorted(counts.items())),
        "n_chars": int(df["text"].str.len_chars().sum()),
        "skipped": skipped,
    }
    return df, report


def main() -> None:
    cfg = params().data
    try:
        df, report = ingest(cfg.corpus_path(), cfg.ingest)
    except IngestError as e:
        # A user error, not a bug: the message says what to fix, a traceback would only bury it.
        print(f"data.ingest: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    write_parquet(df, paths.DOCUMENTS)
    write_json(report, paths.INGEST_REPORT)
    log.info(
        "ingested documents=%d skipped=%d (%s) chars=%d out=%s",
        report["n_read"], report["n_skipped"], report["skipped_by_reason"], report["n_chars"], paths.DOCUMENTS,
    )  # fmt: skip


if __name__ == "__main__":
    main()
