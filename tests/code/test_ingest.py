"""data.ingest: formats read, bad inputs skipped with reasons, clear errors when nothing is readable."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest

from core.config import IngestParams
from data.ingest import IngestError, doc_id_of, ingest, main, normalise, write_parquet

CFG = IngestParams()


def _pdf_bytes(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica (pypdf cannot lay out text; we write the stream)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    add = getattr(w, "add_object", None) or w._add_object
    page = w.add_blank_page(width=612, height=792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})  # fmt: skip
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): add(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = add(stream)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_normalise() -> None:
    assert normalise("Cafe\u0301  \r\nline\r\n\r\n\r\n\r\nend\n\n") == "Caf\u00e9\nline\n\nend"


def test_reads_markdown_text_html_pdf(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("intro\n\n# Guide\n\nSome text.\n")
    (tmp_path / "notes.txt").write_text("plain notes\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text(
        "<html><head><title>Page T</title><script>var x=1;</script></head>"
        "<body><!-- hidden note --><h2>Install</h2><p>Run   the\n   installer.</p></body></html>"
    )
    (tmp_path / "doc.pdf").write_bytes(_pdf_bytes("Hello from a PDF page."))
    df, report = ingest(tmp_path, CFG)
    assert df["source"].to_list() == ["doc.pdf", "guide.md", "notes.txt", "sub/page.html"]
    rows = {r["source"]: r for r in df.iter_rows(named=True)}
    assert rows["guide.md"]["title"] == "Guide"
    assert rows["notes.txt"]["title"] == "notes"  # no heading: the file stem
    html = rows["sub/page.html"]
    assert html["title"] == "Page T"  # no <h1>: the <title>
    assert (
        "## Install" in html["text"]
        and "Run the installer." in html["text"]
        and "var x" not in html["text"]
        and "hidden note" not in html["text"]
    )
    assert "Hello from a PDF page." in rows["doc.pdf"]["text"]
    meta = json.loads(rows["guide.md"]["metadata"])
    assert meta == {
        "format": "markdown",
        "bytes": (tmp_path / "guide.md").stat().st_size,
        "n_chars": len(rows["guide.md"]["text"]),
    }
    assert all(r["doc_id"] == doc_id_of(r["text"]) for r in rows.values())
    assert report["n_read"] == 4 and report["n_skipped"] == 0


def test_skips_bad_files_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("# Good\n\ncontent\n")
    (tmp_path / "copy.md").write_text("# Good\r\n\r\ncontent   \r\n")  # same text once normalised
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("  \n\n")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / ".hidden.md").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.md").write_text("ref")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (tmp_path / "big.md").write_text("x" * 2_000_000)
    df, report = ingest(tmp_path, IngestParams(max_file_mb=1))
    assert df["source"].to_list() == ["copy.md"]  # first by source wins; good.md is its duplicate
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        ".git/": "hidden", ".hidden.md": "hidden", "big.md": "too_large", "bin.txt": "binary", "blank.md": "empty",
        "broken.pdf": "unreadable", "data.csv": "unsupported", "empty.txt": "empty", "good.md": "duplicate",
        "latin1.txt": "not_utf8",
    }  # fmt: skip
    assert report["skipped_by_reason"]["empty"] == 2 and report["n_read"] == 1


def test_no_readable_files_lists_counts(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\x00\x01")
    (tmp_path / "b.txt").write_bytes(b"\x00\x02")
    (tmp_path / "c.md").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(IngestError) as e:
        ingest(tmp_path, CFG)
    msg = str(e.value)
    assert "has no readable files (3 skipped: 2 binary, 1 not UTF-8)" in msg
    assert "supported: .md" in msg


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"has no readable files \(it is empty\)"):
        ingest(tmp_path, CFG)
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "nope", CFG)
    (tmp_path / "only.txt").write_text("")
    with pytest.raises(IngestError, match=r"1 skipped: 1 empty"):
        ingest(tmp_path, CFG)


def test_main_exits_with_message_not_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.config import Params

    p = Params.model_validate({"data": {"corpus_dir": str(tmp_path / "missing")}})
    monkeypatch.setattr("data.ingest.params", lambda: p)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_write_parquet_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "d" / "x.parquet"
    write_parquet(pl.DataFrame({"a": [1]}), out)

    class Boom(pl.DataFrame):
        def write_parquet(self, *a: object, **k: object) -> None:  # type: ignore[override]
            Path(a[0]).write_bytes(b"half")  # type: ignore[arg-type]
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_parquet(Boom({"a": [2]}), out)
    assert pl.read_parquet(out)["a"].to_list() == [1]  # the old file is intact
    assert [p.name for p in out.parent.iterdir()] == ["x.parquet"]  # no temporary left behind
