"""DVC stage `python -m data.chunk`: `documents.parquet` -> `chunks.parquet`.

Token-aware recursive splitting, written here rather than taken from langchain-text-splitters: its
`from_huggingface_tokenizer` counts tokens one string at a time, which is minutes on a few MB of
text; here every level of splitting is one batched tokenizer call.

    document --(Markdown headings)--> sections --(paragraphs > lines > sentences > words)--> pieces
    pieces --(greedy merge up to chunk_tokens, overlap_tokens carried over)--> chunks

A chunk never crosses a section boundary, so every chunk has one heading path ("FUNCTIONS > dumps").
Every chunk records its character span in the document's text (`start`, `end`), so a cited source can
be pointed at in the original. `method: chars` (params `data.chunk`) is the naive recipe instead: fixed
character windows, no headings; it stays a candidate of the `select_chunking` stage so that, when nothing
beats it, it is what the pipeline builds and serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import polars as pl
from transformers import PreTrainedTokenizerBase

from core import paths
from core.chunking import chosen_chunking
from core.config import ChunkParams, params
from core.io import write_parquet
from core.log import get_logger

log = get_logger(__name__)

SCHEMA = {
    "chunk_id": pl.String, "doc_id": pl.String, "source": pl.String, "title": pl.String,
    "heading": pl.String, "position": pl.Int64, "text": pl.String, "n_tokens": pl.Int64,
    "start": pl.Int64, "end": pl.Int64,
}  # fmt: skip
"""`start`, `end`: the chunk's character span in its document's text (`text == document[start:end]`)."""
HEADING_SEP = " > "

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
# Separators from coarse to fine; a piece still over budget is split by the next one.
_LEVELS = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"\n"),  # lines
    re.compile(r"(?<=[.!?;:])\s+"),  # sentences (and clauses)
    re.compile(r"\s+"),  # words
)
_BATCH = 2048  # strings per tokenizer call: large enough to amortise, small enough for memory


@dataclass(frozen=True)
class Section:
    """Body text under one heading path (the heading line itself is not part of `text`)."""

    heading: str
    text: str
    offset: int = 0
    """Where `text` starts in the document's text."""


@dataclass
class _Piece:
    start: int  # character span in the section text
    end: int
    level: int  # index into _LEVELS of the separator that produced it (-1: the whole section)
    n_tokens: int | None = None


# ---- sections -------------------------------------------------------------------------------------


def split_sections(text: str, title: str = "") -> list[Section]:
    """Split Markdown into sections by ATX headings (`#`..`######`), ignoring fenced code blocks.

    Args:
        text: the document text.
        title: the document title; a level-1 heading equal to it is left out of heading paths
            (it is in every chunk's `title` already).

    Returns:
        Sections in document order with a non-blank body; `heading` joins the open headings with " > ".
    """
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    body_start = 0  # where the body's first line starts in `text`
    in_fence = False

    def flush() -> None:
        raw = "\n".join(body)
        joined = raw.strip("\n")
        if joined.strip():
            path = [h for lvl, h in stack if not (lvl == 1 and h == title)]
            lead = len(raw) - len(raw.lstrip("\n"))
            sections.append(Section(HEADING_SEP.join(path), joined, body_start + lead))
        body.clear()

    pos = 0
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, m.group(2).strip()))
            body_start = pos + len(line) + 1
        else:
            body.append(line)
        pos += len(line) + 1
    flush()
    return sections


# ---- tokens ---------------------------------------------------------------------------------------


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Token counts (no special tokens) of `texts`, in batches of `_BATCH` strings."""
    counts: list[int] = []
    for i in range(0, len(texts), _BATCH):
        # verbose=False: texts longer than the model window are expected here (we are about to split them).
        enc = tokenizer(list(texts[i : i + _BATCH]), add_special_tokens=False, verbose=False,
                        return_attention_mask=False, return_token_type_ids=False)  # fmt: skip
        counts += [len(ids) for ids in enc["input_ids"]]
    return counts


def _hard_split(tokenizer: PreTrainedTokenizerBase, text: str, start: int, end: int, limit: int) -> list[_Piece]:
    """Cut one over-long unbreakable piece (a URL, a base64 blob) every `limit` tokens."""
    try:
        offsets = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]  # fmt: skip
    except (NotImplementedError, ValueError):  # slow tokenizers have no offsets: cut by characters
        return [_Piece(a, min(a + limit, end), 4, None) for a in range(start, end, limit)]
    out = []
    for i in range(0, len(offsets), limit):
        part = offsets[i : i + limit]
        out.append(_Piece(start + part[0][0], start + part[-1][1], 4, len(part)))
    return out


def _split(text: str, piece: _Piece) -> list[_Piece]:
    """Split a piece at the next finer separator that actually divides it."""
    for level in range(piece.level + 1, len(_LEVELS)):
        spans, pos = [], piece.start
        for m in _LEVELS[level].finditer(text, piece.start, piece.end):
            spans.append((pos, m.start()))
            pos = m.end()
        spans.append((pos, piece.end))
        out = [_Piece(a, b, level) for a, b in (_trim(text, a, b) for a, b in spans) if a < b]
        if len(out) > 1:
            return out
    return [_Piece(piece.start, piece.end, len(_LEVELS))]  # one word: nothing left to split on


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def split_pieces(tokenizer: PreTrainedTokenizerBase, sections: Sequence[str], limit: int) -> list[list[_Piece]]:
    """Split every section into pieces of at most `limit` tokens, one batched count per level.

    Returns:
        For each section, its pieces in order, each with its token count.
    """
    pieces = [[_Piece(*_trim(t, 0, len(t)), -1)] for t in sections]
    while True:
        todo = [(s, p) for s, ps in enumerate(pieces) for p in ps if p.n_tokens is None]
        if not todo:
            return pieces
        counts = count_tokens(tokenizer, [sections[s][p.start : p.end] for s, p in todo])
        for (_, p), n in zip(todo, counts, strict=True):
            p.n_tokens = n
        for s, ps in enumerate(pieces):
            if any(p.n_tokens > limit for p in ps):  # type: ignore[operator]
                pieces[s] = list(_refine(tokenizer, sections[s], ps, limit))


def _refine(tokenizer: PreTrainedTokenizerBase, text: str, ps: list[_Piece], limit: int) -> Iterator[_Piece]:
    for p in ps:
        if p.n_tokens is not None and p.n_tokens <= limit:
            yield p
        elif p.level >= len(_LEVELS) - 1:
            yield from _hard_split(tokenizer, text, p.start, p.end, limit)
        else:
            yield from _split(text, p)


def merge_pieces(pieces: Sequence[_Piece], limit: int, overlap: int) -> list[tuple[int, int]]:
    """Greedily merge consecutive pieces up to `limit` tokens, starting each chunk with the previous
    chunk's trailing pieces worth at most `overlap` tokens.

    Token counts of pieces are added; for WordPiece (MiniLM) joining at whitespace is exactly additive.

    Returns:
        Character spans (start, end) of the chunks in the section text.
    """
    spans: list[tuple[int, int]] = []
    cur: list[_Piece] = []
    total = 0
    for p in pieces:
        n = p.n_tokens or 0
        if cur and total + n > limit:
            spans.append((cur[0].start, cur[-1].end))
            keep: list[_Piece] = []
            kept = 0
            for q in reversed(cur):
                if kept + (q.n_tokens or 0) > overlap:
                    break
                keep.insert(0, q)
                kept += q.n_tokens or 0
            if len(keep) == len(cur):  # the whole chunk would repeat: keep only its tail
                kept -= keep.pop(0).n_tokens or 0
            while keep and kept + n > limit:
                kept -= keep.pop(0).n_tokens or 0
            cur, total = keep, kept
        cur.append(p)
        total += n
    if cur:
        spans.append((cur[0].start, cur[-1].end))
    return spans


# ---- the stage -------------------------------------------------------------------------------------


def chunk_documents(
    docs_df: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, chunk_params: ChunkParams
) -> pl.DataFrame:
    """Chunk every document by `chunk_params.method`.

    Args:
        docs_df: `documents.parquet` (columns `doc_id, source, title, text`).
        tokenizer: the embedder's tokenizer; chunk sizes are counted in its tokens.
        chunk_params: the chosen chunking (`core.chunking.chosen_chunking`) or a candidate of it.

    Returns:
        One row per chunk (see `SCHEMA`), sorted by source then position; positions are 0..n-1 per
        document after short chunks are dropped, and `chunk_id` is f"{doc_id}-{position:05d}".
    """
    cp = chunk_params
    # (doc_id, source, title, heading, start, end, chunk text) per chunk, in order
    rows: list[tuple[str, str, str, str, int, int, str]] = []
    docs = docs_df.sort("source").iter_rows(named=True)
    if cp.method == "chars":
        for doc in docs:
            for a, b in char_windows(doc["text"], cp.chunk_chars, cp.overlap_chars):
                rows.append((doc["doc_id"], doc["source"], doc["title"], "", a, b, doc["text"][a:b]))
    else:
        meta: list[tuple[str, str, str, str, int]] = []  # (doc_id, source, title, heading, offset) per section
        texts: list[str] = []
        for doc in docs:
            for sec in split_sections(doc["text"], doc["title"]):
                meta.append((doc["doc_id"], doc["source"], doc["title"], sec.heading, sec.offset))
                texts.append(sec.text)
        pieces = split_pieces(tokenizer, texts, cp.chunk_tokens)
        for (doc_id, source, title, heading, offset), text, ps in zip(meta, texts, pieces, strict=True):
            for a, b in merge_pieces(ps, cp.chunk_tokens, cp.overlap_tokens):
                a, b = _trim(text, a, b)
                if a < b:
                    rows.append((doc_id, source, title, heading, offset + a, offset + b, text[a:b]))
    n_tokens = count_tokens(tokenizer, [r[6] for r in rows])
    out: list[dict[str, object]] = []
    position: dict[str, int] = {}
    for (doc_id, source, title, heading, start, end, chunk), n in zip(rows, n_tokens, strict=True):
        if n < cp.min_chunk_tokens:
            continue
        pos = position[doc_id] = position.get(doc_id, -1) + 1
        out.append({"chunk_id": f"{doc_id}-{pos:05d}", "doc_id": doc_id, "source": source, "title": title,
                    "heading": heading, "position": pos, "text": chunk, "n_tokens": n,
                    "start": start, "end": end})  # fmt: skip
    return pl.DataFrame(out, schema=SCHEMA)


def char_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of fixed windows of `size` characters, `overlap` shared, over `text` (blank windows skipped).

    The recipe people write by hand (and the naive baseline): no regard for headings, sentences or words.
    """
    step = size - overlap
    spans = [(a, min(a + size, len(text))) for a in range(0, max(len(text) - overlap, 1), step)]
    return [(a, b) for a, b in spans if text[a:b].strip()]


def load_tokenizer() -> PreTrainedTokenizerBase:
    """The base embedder's tokenizer from `artifacts/base/embedder`.

    Raises:
        FileNotFoundError: the base models stage has not run yet.
    """
    from transformers import AutoTokenizer

    if not paths.BASE_EMBEDDER.is_dir():
        raise FileNotFoundError(
            f"{paths.BASE_EMBEDDER} does not exist: run `python -m training.base_models` (or `dvc repro`) first"
        )
    return AutoTokenizer.from_pretrained(paths.BASE_EMBEDDER)


def run(tokenizer: PreTrainedTokenizerBase, cp: ChunkParams) -> pl.DataFrame:
    """Read `documents.parquet`, chunk it and write `chunks.parquet` (atomically)."""
    if not paths.DOCUMENTS.exists():
        raise FileNotFoundError(f"{paths.DOCUMENTS} does not exist: run `python -m data.ingest` first")
    docs = pl.read_parquet(paths.DOCUMENTS)
    chunks = chunk_documents(docs, tokenizer, cp)
    if chunks.is_empty():
        raise ValueError(
            f"no chunk of {cp.name} has at least data.chunk.min_chunk_tokens={cp.min_chunk_tokens} tokens: "
            "lower it or add longer documents"
        )
    write_parquet(chunks, paths.CHUNKS)
    n = chunks["n_tokens"]
    log.info(
        "chunked documents=%d chunks=%d tokens_mean=%.0f tokens_max=%d out=%s",
        docs.height, chunks.height, n.mean(), n.max(), paths.CHUNKS,
    )  # fmt: skip
    return chunks


def main() -> None:
    cp = chosen_chunking(params())
    log.info("chunking=%s (stage select_chunking)", cp.name)
    run(load_tokenizer(), cp)


if __name__ == "__main__":
    main()
