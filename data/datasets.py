"""DVC stage `python -m data.datasets`: chunks and questions -> embedder and chat training/evaluation sets.

Documents, never chunks, are split into train and held-out, so no passage of a held-out document
(nor its near-duplicate neighbour chunk) is seen in training. Every choice (split, caps) comes from a
seeded sha256 of a stable key, so the files are byte-identical across runs and machines.

    embed_train         anchor (query), positive (chunk text), doc_id      <- train docs
    embed_eval_queries  query_id, query, relevant_ids (chunk_ids)         <- held-out docs
    embed_eval_corpus   chunk_id, text                                    <- held-out docs
    chat_train / eval   query_id, question, contexts, answer, doc_id,     <- train / held-out docs
                        chunk_id, answerable                                 questions (data/grounded.py)
"""

from __future__ import annotations

import hashlib
from collections import Counter
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


def _with_queries(chunks: pl.DataFrame) -> pl.DataFrame:
    titles, headings = chunks["title"].to_list(), chunks["heading"].to_list()
    return chunks.with_columns(
        query=pl.Series([query_text(t, h) for t, h in zip(titles, headings, strict=True)], dtype=pl.String),
    )


def build_datasets(
    chunks_df: pl.DataFrame, params: Params, train_questions: pl.DataFrame, eval_questions: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """Build every training and evaluation set from the chunks and the questions.

    Args:
        chunks_df: `chunks.parquet` (chunk_id, doc_id, title, heading, text, ...).
        params: the project parameters (`data.datasets`, `retrieval.stemmer` and `seed`).
        train_questions: `train_questions.parquet` (stage `questions`): the training documents' questions.
        eval_questions: `eval_questions.parquet`: the held-out documents' questions. Both are filtered to
            their side of the split here, so a question about a held-out document never reaches chat_train.

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
    # imported here: data.grounded takes `seeded_sample` / `stable_unit` from this module
    from data.grounded import grounded_examples

    def chat(questions: pl.DataFrame, side: pl.DataFrame, cap: int, tool_fraction: float) -> pl.DataFrame:
        # chunks.parquet is of the unmasked documents: the passage holding a question's sentence is in it
        return grounded_examples(
            questions.filter(pl.col("doc_id").is_in(side["doc_id"].unique().to_list())),
            side, cfg.chat_passages, cfg.unanswerable_fraction, cap, seed, params.retrieval.stemmer, tool_fraction,
        )  # fmt: skip

    return {
        "embed_train": embed_train,
        "embed_eval_queries": queries,
        "embed_eval_corpus": held.select("chunk_id", "text"),
        "chat_train": chat(train_questions, train, cfg.max_chat_train, cfg.tool_fraction),
        # held out as RAG examples only: the gate's loss compares like with like; evaluation asks for tool calls
        # with the same questions (evaluation/chat_quality.py `tool_call_rate`)
        "chat_eval": chat(eval_questions, held, cfg.max_chat_eval, 0.0),
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
        "chat_unanswerable": {name: int((~frames[name]["answerable"]).sum()) for name in ("chat_train", "chat_eval")},
        "chat_train_formats": dict(sorted(Counter(frames["chat_train"]["format"].to_list()).items())),
        "seed": params.seed,
        "eval_fraction": cfg.eval_fraction,
    }


def main() -> None:
    p = params()
    for need, stage in (
        (paths.CHUNKS, "chunk"),
        (paths.TRAIN_QUESTIONS, "questions"),
        (paths.EVAL_QUESTIONS, "questions"),
    ):
        if not need.exists():
            raise SystemExit(f"{need} does not exist: run `dvc repro {stage}` first")
    chunks = pl.read_parquet(paths.CHUNKS)
    try:
        frames = build_datasets(
            chunks, p, pl.read_parquet(paths.TRAIN_QUESTIONS), pl.read_parquet(paths.EVAL_QUESTIONS)
        )
    except DatasetError as e:
        raise SystemExit(f"data.datasets: {e}") from None
    for name, df in frames.items():
        write_parquet(df, OUTPUTS[name])
    stats = dataset_stats(chunks, frames, p)
    write_json(stats, paths.DATASETS_STATS)
    log.info("datasets written rows=%s docs=%s out=%s", stats["rows"], stats["docs"], paths.DATASETS)


if __name__ == "__main__":
    main()
