"""data.sample_corpus: pydoc -> Markdown conversion, caps, determinism and atomic replacement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import SampleCorpusParams
from data.sample_corpus import cut_at_line, pydoc_to_markdown, topic_to_markdown, write_sample_corpus

PYDOC = """Python Library Documentation: module demo

NAME
    demo - A demo module.

MODULE REFERENCE
    https://docs.python.org/3.11/library/demo.html

DESCRIPTION
    Long description.
    # not a heading

CLASSES
    builtins.object
        Thing
    
    class Thing(builtins.object)
     |  Thing(x)
     |  
     |  Methods defined here:
     |  
     |  ----------------------------------------------------------------------
     |  Data descriptors defined here:

FUNCTIONS
    dumps(obj, *, indent=None)
        Serialize obj at <object object at 0x7f00deadbeef>.
    
    loads(s)
        Parse s.

DATA
    PATH = '/home/someone/.local/lib'
    SEP = ':'

FILE
    /usr/lib/python3.11/demo.py
"""


def test_pydoc_to_markdown_headings_and_cleaning() -> None:
    md = pydoc_to_markdown("demo", PYDOC, markers={})
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == ["# demo", "## NAME", "## DESCRIPTION", "## CLASSES", "### class Thing", "## FUNCTIONS",
                        "### dumps", "### loads", "## DATA"]  # fmt: skip
    assert "\\# not a heading" in md  # a body line starting with # is escaped, not a heading
    assert "docs.python.org" not in md and "/usr/lib" not in md  # MODULE REFERENCE, FILE dropped
    assert "0x7f00deadbeef" not in md and "0x..." in md
    assert "PATH = <machine-specific value>" in md and "SEP = ':'" in md
    assert "-----" not in md and "Methods defined here:" in md
    assert md.endswith("\n") and "\n\n\n" not in md


def test_pydoc_markers_replaced_everywhere() -> None:
    md = pydoc_to_markdown(
        "demo", "FUNCTIONS\n    f(exe='/opt/py/bin/python')\n", markers={"/opt/py/bin/python": "<python>"}
    )
    assert "f(exe='<python>')" in md


def test_topic_to_markdown() -> None:
    md = topic_to_markdown(
        "assert", 'The "assert" statement\n**********************\n\nBody.\n\nSub part\n========\n\nMore.\n'
    )
    assert md.splitlines()[0] == '# The "assert" statement'
    assert "## Sub part" in md and "=====" not in md
    assert topic_to_markdown("x", "no title here\n").startswith("# x\n")


def test_cut_at_line() -> None:
    assert cut_at_line("aaa\nbbb\nccc\n", 9) == "aaa\nbbb\n"
    assert cut_at_line("short\n", 100) == "short\n"


def test_write_small_corpus_deterministic_and_atomic(tmp_path: Path) -> None:
    cfg = SampleCorpusParams(max_topics=2, max_modules=3, max_chars_per_doc=5_000)
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale.md").write_text("from an earlier run")
    s1 = write_sample_corpus(out, cfg)
    assert s1.n_topics == 2 and s1.n_modules == 3
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md"))
    assert len(files) == 5 and "stale.md" not in files
    assert all(f.startswith(("topics/", "library/")) for f in files)
    first = {f: (out / f).read_bytes() for f in files}
    assert s1.n_bytes == sum(len(b) for b in first.values())
    for b in first.values():
        text = b.decode()
        assert text.startswith("# ") and len(text) <= 5_000
        assert not re.search(r"0x[0-9a-f]{4,}", text)
    lib = next(f for f in files if f.startswith("library/"))
    assert "## NAME" in first[lib].decode() and "## FILE" not in first[lib].decode()
    write_sample_corpus(out, cfg)
    assert {f: (out / f).read_bytes() for f in files} == first
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no temporary folder left behind


def test_nothing_included_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both false"):
        write_sample_corpus(tmp_path / "c", SampleCorpusParams(include_topics=False, include_modules=False))
