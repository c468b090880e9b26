"""DVC stage `python -m data.datasets`: `chunks.parquet` -> embedder and chat training/evaluation sets.

Documents, never chunks, are split into train and held-out, so no passage of a held-out document
(nor its near-duplicate neighbour chunk) is seen in training. Every choice (split, caps) comes from a
seeded sha256 of a stable key, so the files are byte-identical across runs and machines.

    embed_train         anchor (query), positive (chunk text), doc_id      <- train docs
    embed_eval_queries  query_id, query, relevant_ids (chunk_ids)         <- held-out docs
    embed_eval_corpus   chunk_id, text                                    <- held-out docs
    chat_train / eval   question, context, answer, doc_id, chunk_id       <- train / held-out docs
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import polars as pl

from core import paths
from core.config import Params, params
from core.io import write_json, write_parquet
from core.log import get_logger
from data.chunk import HEADING_SEP

log = get_logger(__name__)

OUTPUTS = {
    "embed_train": paths.EMBED_TRAIN,
    "embed_eval_queries": paths.EMBED_EVAL_QUERIES,
    "embed_eval_corpus": paths.EMBED_EVAL_CORPUS,
    "chat_train": paths.CHAT_TRAIN,
    "chat_eval": paths.CHAT_EVAL,
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class DatasetError(ValueError):
    """The chunks cannot make a train/held-out split; the message says what to change."""


# ---- deterministic randomness ---------------------------------------------------------------------


def stable_unit(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): sha256, not `hash()`, which is salted per process."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def seeded_sample(df: pl.DataFrame, n: int | None, key: str, seed: int) -> pl.DataFrame:
    """Up to `n` rows chosen by the seeded hash of column `key` (all rows when `n` is None)."""
    if n is None or df.height <= n:
        return df
    rank = [stable_unit(seed, k) for k in df[key].to_list()]
    return df.with_columns(_rank=pl.Series(rank)).sort("_rank").head(n).drop("_rank")


def split_documents(doc_ids: Iterable[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split documents into (train, held-out) by a seeded hash of their id.

    At least one document lands on each side: when the fraction rounds to none, the document with
    the smallest (or largest) hash moves over.

    Raises:
        DatasetError: fewer than two documents.
    """
    ids = sorted(set(doc_ids))
    if len(ids) < 2:
        raise DatasetError(
            f"need at least 2 documents to hold one out for evaluation, got {len(ids)}: "
            "add documents to the corpus folder (data.corpus_dir)"
        )
    ranked = sorted(ids, key=lambda d: (stable_unit(seed, d), d))
    n_eval = sum(1 for d in ids if stable_unit(seed, d) < eval_fraction)
    n_eval = min(max(n_eval, 1), len(ids) - 1)
    # The lowest hashes are exactly those under eval_fraction, so this is the hash split itself.
    return sorted(ranked[n_eval:]), sorted(ranked[:n_eval])


# ---- rows -----------------------------------------------------------------------------------------


def query_text(title: str, heading: str) -> str:
    """`"json: dumps"` for a chunk under "FUNCTIONS > dumps" of `json`; the title alone without heading."""
    last = heading.split(HEADING_SEP)[-1].strip() if heading else ""
    return f"{title}: {last}" if last else title


def question_text(title: str, heading: str) -> str:
    """The chat question asked about a chunk."""
    last = heading.split(HEADING_SEP)[-1].strip() if heading else ""
    about = f"{last} in {title}" if last else title
    return f"What does the documentation say about {about}?"


def reference_answer(text: str, max_words: int) -> str:
    """The passage's first sentences, whole sentences while they fit in `max_words` words (the first
    sentence is cut if it alone is longer). Whitespace is collapsed: code indentation is noise here."""
    words: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        w = sentence.split()
        if words and len(words) + len(w) > max_words:
            break
        words += w
        if len(words) >= max_words:
            break
    return " ".join(words[:max_words])


def _with_queries(chunks: pl.DataFrame) -> pl.DataFrame:
    titles, headings = chunks["title"].to_list(), chunks["heading"].to_list()
    return chunks.with_columns(
        query=pl.Series([query_text(t, h) for t, h in zip(titles, headings, strict=True)], dtype=pl.String),
        question=pl.Series([question_text(t, h) for t, h in zip(titles, headings, strict=True)], dtype=pl.String),
    )


def _chat(chunks: pl.DataFrame, cap: int, max_words: int, seed: int) -> pl.DataFrame:
    sample = seeded_sample(chunks, cap, "chunk_id", seed).sort("chunk_id")
    answers = [reference_answer(t, max_words) for t in sample["text"].to_list()]
    return sample.select(
        "question", pl.col("text").alias("context"), pl.Series("answer", answers, dtype=pl.String), "doc_id", "chunk_id"
    )


def build_datasets(chunks_df: pl.DataFrame, params: Params) -> dict[str, pl.DataFrame]:
    """Build every training and evaluation set from the chunks.

    Args:
        chunks_df: `chunks.parquet` (chunk_id, doc_id, title, heading, text, ...).
        params: the project parameters (`data.datasets` and `seed`).

    Returns:
        Frames keyed as in `OUTPUTS`, each sorted so that equal inputs give byte-identical files.

    Raises:
        DatasetError: fewer than two documents.
    """
    cfg, seed = params.data.datasets, params.seed
    train_ids, eval_ids = split_documents(chunks_df["doc_id"].to_list(), cfg.eval_fraction, seed)
    chunks = _with_queries(chunks_df.sort("chunk_id"))
    train = chunks.filter(pl.col("doc_id").is_in(train_ids))
    held = chunks.filter(pl.col("doc_id").is_in(eval_ids))

    embed_train = (
        seeded_sample(train, cfg.max_embed_pairs, "chunk_id", seed)
        .sort("chunk_id")
        .select(pl.col("query").alias("anchor"), pl.col("text").alias("positive"), "doc_id")
    )
    queries = (
        held.group_by("query")
        .agg(pl.col("chunk_id").sort().alias("relevant_ids"))
        .with_columns(
            query_id=pl.col("query").map_elements(
                lambda q: "q-" + hashlib.sha256(q.encode()).hexdigest()[:12], return_dtype=pl.String
            )
        )
    )
    queries = (
        seeded_sample(queries, cfg.max_eval_queries, "query", seed)
        .sort("query_id")
        .select("query_id", "query", pl.col("relevant_ids").cast(pl.List(pl.String)))
    )
    return {
        "embed_train": embed_train,
        "embed_eval_queries": queries,
        "embed_eval_corpus": held.select("chunk_id", "text"),
        "chat_train": _chat(train, cfg.max_chat_train, cfg.answer_max_words, seed),
        "chat_eval": _chat(held, cfg.max_chat_eval, cfg.answer_max_words, seed),
    }


def dataset_stats(chunks_df: pl.DataFrame, frames: dict[str, pl.DataFrame], params: Params) -> dict[str, object]:
    """Row counts per output and documents / chunks per split (written to `stats.json`)."""
    cfg = params.data.datasets
    train_ids, eval_ids = split_documents(chunks_df["doc_id"].to_list(), cfg.eval_fraction, params.seed)
    return {
        "rows": {name: df.height for name, df in frames.items()},
        "docs": {"train": len(train_ids), "eval": len(eval_ids)},
        "chunks": {
            "train": int(chunks_df["doc_id"].is_in(train_ids).sum()),
            "eval": int(chunks_df["doc_id"].is_in(eval_ids).sum()),
        },
        "seed": params.seed,
        "eval_fraction": cfg.eval_fraction,
    }


def main() -> None:
    p = params()
    if not paths.CHUNKS.exists():
        raise SystemExit(f"{paths.CHUNKS} does not exist: run `python -m data.chunk` first")
    chunks = pl.read_parquet(paths.CHUNKS)
    try:
        frames = build_datasets(chunks, p)
    except DatasetError as e:
        raise SystemExit(f"data.datasets: {e}") from None
    for name, df in frames.items():
        write_parquet(df, OUTPUTS[name])
    stats = dataset_stats(chunks, frames, p)
    write_json(stats, paths.DATASETS_STATS)
    log.info("datasets written rows=%s docs=%s out=%s", stats["rows"], stats["docs"], paths.DATASETS)


if __name__ == "__main__":
    main()
