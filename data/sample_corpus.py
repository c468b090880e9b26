"""DVC stage `python -m data.sample_corpus`: render CPython's own documentation as a Markdown corpus.

The default corpus needs no download: the Language Reference topics shipped in `pydoc_data` and the
standard library rendered by `pydoc`. Output is one `.md` per topic (`topics/`) and per module
(`library/`) under `artifacts/corpus/`, byte-identical across runs and machines with the same
Python version: machine paths, URLs and memory addresses are removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import pydoc
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path

from tqdm import tqdm

from core import paths
from core.config import SampleCorpusParams, params
from core.log import get_logger

log = get_logger(__name__)

CORPUS_DIR = paths.ARTIFACTS / "corpus"
"""Where the stage writes; `params.yaml`'s `data.corpus_dir` points here by default."""

# GUI, test suites, modules with side effects on import (a browser tab, the Zen printed), packaging
# bootstrap, and `pydoc_data` itself (its topics are rendered separately, page by page).
_SKIP_MODULES = frozenset(
    {
        "antigravity", "ensurepip", "idlelib", "lib2to3", "pydoc_data", "test", "this",
        "tkinter", "turtle", "turtledemo",
    }
)  # fmt: skip

# Sections that hold machine paths or version-specific URLs.
_DROP_SECTIONS = frozenset({"FILE", "MODULE REFERENCE"})

# DATA values that depend on the machine (timezone, command line) rather than on Python.
_MACHINE_DATA = {
    "time": frozenset({"altzone", "daylight", "timezone", "tzname"}),
    # sys.path and friends depend on how Python was started (`-m`, `-c`, a script) and from where.
    "sys": frozenset(
        {
            "argv",
            "orig_argv",
            "path",
            "path_importer_cache",
            "path_hooks",
            "meta_path",
            "modules",
            "warnoptions",
            "_xoptions",
        }
    ),
}
# DATA values holding a quoted absolute path, the environment, loaded modules or a native handle
# (pydoc truncates long reprs, so a full-path match would miss them).
_MACHINE_VALUE = re.compile(r"""['"]/\w[^'"]*/|environ\(|<module |FileFinder\(|handle [0-9a-f]{6,}""")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_SECTION = re.compile(r"^[A-Z][A-Z ]*[A-Z]$")
_FUNC = re.compile(r"^(?P<name>[A-Za-z_]\w*|<lambda>)(?: = [\w.]+| lambda)?\(")
_CLASS = re.compile(r"^(?:(?P<alias>\w+) = )?class (?P<name>\w+)")
_DATA_ITEM = re.compile(r"^(?P<name>\w+) = (?P<value>.*)$")
_UNDERLINE = re.compile(r"^([*=\-~^#+])\1{2,}$")


@dataclass(frozen=True)
class SampleCorpusSummary:
    """What one run wrote; the stage logs it and tests assert on it."""

    out_dir: Path
    n_topics: int
    n_modules: int
    skipped_modules: list[str] = field(default_factory=list)
    """Modules that failed to import or render (platform-specific, missing C extensions)."""
    n_bytes: int = 0
    seconds: float = 0.0


# ---- topics ---------------------------------------------------------------------------------------


def topic_to_markdown(key: str, text: str) -> str:
    """Convert one `pydoc_data` topic (reST-like plain text) to Markdown.

    The first underlined title becomes the `#` heading (else the topic key); later underlined titles
    become `##`, `###`, ... in the order their underline characters first appear, as in reST.

    Args:
        key: the topic key, e.g. `"assert"`.
        text: the topic text.

    Returns:
        The Markdown page, ending with a newline.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    levels: dict[str, int] = {}
    has_title = False
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        m = _UNDERLINE.match(nxt.strip())
        if line.strip() and m and not line.startswith(" ") and len(nxt.strip()) >= len(line.strip()) - 1:
            if not has_title:
                out.append(f"# {line.strip()}")
                has_title = True
            else:
                level = levels.setdefault(m.group(1), min(2 + len(levels), 6))
                out.append(f"{'#' * level} {line.strip()}")
            i += 2
            continue
        out.append(_escape_hash(line))
        i += 1
    if not has_title:
        out.insert(0, f"# {key}\n")
    return _finish(out)


# ---- modules --------------------------------------------------------------------------------------


def candidate_modules() -> list[str]:
    """Public, non-GUI, non-test top-level standard-library modules, sorted."""
    return sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in _SKIP_MODULES)


def machine_markers() -> dict[str, str]:
    """Machine-specific strings mapped to the placeholder that replaces them in rendered pages.

    Default arguments are rendered by value: `cgi.parse(environ=os.environ)` would print the whole
    environment and `platform.architecture(executable=sys.executable)` this interpreter's path.
    """
    marks = {repr(os.environ): "os.environ", sys.executable: "<python>", str(paths.PROJECT_ROOT): "<project>"}
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        marks.setdefault(prefix, "<prefix>")
    # Longest first so that `/root/.pyenv/versions/3.11.7/bin/python` is replaced before its prefix.
    return dict(sorted(marks.items(), key=lambda kv: len(kv[0]), reverse=True))


def pydoc_to_markdown(module: str, text: str, markers: dict[str, str] | None = None) -> str:
    """Convert `pydoc.render_doc(..., renderer=pydoc.plaintext)` output to Markdown.

    `# module`; each ALL-CAPS section (`NAME`, `DESCRIPTION`, `CLASSES`, ...) becomes `## SECTION`;
    in `FUNCTIONS` each signature becomes `### name`, in `CLASSES` each class `### class Name`.
    `FILE` and `MODULE REFERENCE` are dropped, memory addresses and DATA values naming machine paths
    are replaced, so the page is the same on every machine.

    Args:
        module: the module name (the `#` heading).
        text: pydoc's plain-text rendering.
        markers: machine-specific strings and their placeholders; defaults to `machine_markers()`.

    Returns:
        The Markdown page, ending with a newline.
    """
    markers = machine_markers() if markers is None else markers
    machine_names = _MACHINE_DATA.get(module, frozenset())
    text = text.replace("\r\n", "\n")
    for mark, placeholder in markers.items():
        text = text.replace(mark, placeholder)
    text = _ADDRESS.sub("0x...", text)
    lines = text.split("\n")
    if lines and lines[0].startswith("Python Library Documentation:"):
        lines = lines[1:]
    out = [f"# {module}", ""]
    section = ""
    for raw in lines:
        if _SECTION.match(raw):
            section = raw
            if section not in _DROP_SECTIONS:
                out += ["", f"## {section}", ""]
            continue
        if section in _DROP_SECTIONS or not section:
            continue
        line = raw[4:] if raw.startswith("    ") else raw.lstrip()
        if section == "FUNCTIONS":
            if (m := _FUNC.match(line)) and not raw.startswith("     "):
                out += ["", f"### {m['name']}", "", f"`{line.strip()}`", ""]
                continue
            line = line[4:] if line.startswith("    ") else line
        elif section == "CLASSES":
            if (m := _CLASS.match(line)) and not raw.startswith("     "):
                out += ["", f"### class {m['alias'] or m['name']}", "", line.strip(), ""]
                continue
            if line.startswith(" |"):
                line = line[4:] if line.startswith(" |  ") else line[2:]
            if line.strip() and set(line.strip()) == {"-"}:
                continue  # pydoc's rules under a text line would read as a Markdown heading
        elif section == "DATA" and (m := _DATA_ITEM.match(line)):
            value = m["value"]
            if m["name"] in machine_names or _MACHINE_VALUE.search(value):
                line = f"{m['name']} = <machine-specific value>"
        out.append(_escape_hash(line))
    return _finish(out)


def render_module(name: str) -> str:
    """Import and render one module with pydoc, silencing whatever it prints or warns.

    Raises:
        Exception: whatever the import or pydoc raises; the caller counts and skips it.
    """
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = import_module(name)
        return pydoc.render_doc(mod, renderer=pydoc.plaintext)  # type: ignore[attr-defined]  # not in typeshed


# ---- shared helpers --------------------------------------------------------------------------------


def _escape_hash(line: str) -> str:
    # A body line starting with `#` (a code comment in an example) must not become a heading.
    return "\\" + line if line.startswith("#") else line


def _finish(lines: list[str]) -> str:
    text = "\n".join(x.rstrip() for x in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n"


def cut_at_line(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters at a line boundary (keeps at least one line)."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    return (text[:cut] if cut > 0 else text[:max_chars]).rstrip() + "\n"


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".md"


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `tmp` with two renames, so readers never see a half-written corpus."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---- the stage -------------------------------------------------------------------------------------


def write_sample_corpus(out_dir: Path, cfg: SampleCorpusParams) -> SampleCorpusSummary:
    """Render the topics and modules selected by `cfg` into `out_dir` (replaced atomically).

    Args:
        out_dir: the corpus folder; created or replaced as a whole.
        cfg: `params().data.sample_corpus`.

    Returns:
        Counts, skipped modules, bytes written and wall time.

    Raises:
        ValueError: both `include_topics` and `include_modules` are false (the corpus would be empty).
    """
    if not (cfg.include_topics or cfg.include_modules):
        raise ValueError(
            "data.sample_corpus: include_topics and include_modules are both false, so the corpus would "
            "be empty; enable one, or point data.corpus_dir at your own documents and skip this stage"
        )
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    n_topics = n_modules = 0
    skipped: list[str] = []
    try:
        if cfg.include_topics:
            from pydoc_data.topics import topics

            (tmp / "topics").mkdir()
            keys = sorted(topics)[: cfg.max_topics]
            for key in tqdm(keys, desc="topics", unit="topic"):
                page = cut_at_line(topic_to_markdown(key, topics[key]), cfg.max_chars_per_doc)
                (tmp / "topics" / _file_name(key)).write_text(page, encoding="utf-8")
                n_topics += 1
        if cfg.include_modules:
            (tmp / "library").mkdir()
            names = candidate_modules()
            bar = tqdm(total=cfg.max_modules or len(names), desc="modules", unit="mod")
            for name in names:
                if cfg.max_modules is not None and n_modules >= cfg.max_modules:
                    break
                try:
                    text = render_module(name)
                    markers = machine_markers()  # after the import: os.environ's repr may have changed
                except BaseException as e:
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    skipped.append(name)
                    continue
                page = cut_at_line(pydoc_to_markdown(name, text, markers), cfg.max_chars_per_doc)
                (tmp / "library" / _file_name(name)).write_text(page, encoding="utf-8")
                n_modules += 1
                bar.update()
            bar.close()
        n_bytes = sum(p.stat().st_size for p in tmp.rglob("*.md"))
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SampleCorpusSummary(out_dir, n_topics, n_modules, sorted(skipped), n_bytes, time.perf_counter() - start)


def main() -> None:
    summary = write_sample_corpus(CORPUS_DIR, params().data.sample_corpus)
    info = asdict(summary)
    log.info(
        "sample corpus written out_dir=%s topics=%d modules=%d skipped=%d mb=%.2f seconds=%.1f",
        info["out_dir"], summary.n_topics, summary.n_modules, len(summary.skipped_modules),
        summary.n_bytes / 1e6, summary.seconds,
    )  # fmt: skip
    if summary.skipped_modules:
        log.info("skipped modules (failed to import or render): %s", ", ".join(summary.skipped_modules))


if __name__ == "__main__":
    main()
