"""Fixtures for the hot-path benchmarks: the real pipeline outputs under `artifacts/` and the active Chroma index,
each loaded once per session on the CPU (loading is not what is measured).

A missing output skips the benchmarks that need it, with the stage to run; `-ra` (pyproject's addopts) lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from chromadb import Collection
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.config import params
from core.loading import load_chat, load_embedder
from core.paths import CHAT_EVAL, CHAT_INT8_MODEL, CHAT_MODEL, CHUNKS, EMBEDDER_MODEL
from core.prompts import rag_messages
from core.vectorstore import chroma_client, read_active

# every model is a local folder, so nothing reaches the hub; the tokenizers library reads this at call time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A long RAG request: a passage over serving.rag_top_k (4), under serving.rag_context_tokens (1024) of context.
PASSAGES = 5  # chat_eval rows hold 3 (data.chat_passages); chunks fill the rest
PROMPT_TOKENS = 800  # the chat_eval question whose prompt comes closest to this is used
EMBED_BATCH = 32  # sentence-transformers' default encode batch, which serving's embedder uses


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: run the pipeline (`dvc repro {stage}`) first")
    return path


@dataclass(frozen=True)
class RagCase:
    """One RAG request as the chat engine sees it: the messages, and their prompt token ids."""

    question: str
    passages: list[str]
    ids: list[int]
    """The rendered chat template tokenised, assistant turn opened (what `ChatEngine.encode_messages` returns)."""

    def messages(self) -> list[dict[str, str]]:
        return rag_messages(self.question, self.passages)


def encode(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Prompt ids the way serving/engines/chat.py builds them (the template's own tokenisation)."""
    enc: Any = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    return [int(i) for i in (ids[0] if ids and isinstance(ids[0], list) else ids)]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """The float chat model's tokenizer (the int8 folder ships the same files)."""
    return AutoTokenizer.from_pretrained(str(_need(CHAT_MODEL, "train_chat")))


@pytest.fixture(scope="session")
def rag_case(tokenizer: PreTrainedTokenizerBase) -> RagCase:
    """The chat_eval question whose contexts, topped up to `PASSAGES` with the same mid-sized chunks, make the
    prompt closest to `PROMPT_TOKENS` tokens: deterministic, so saved runs compare."""
    evals = pl.read_parquet(_need(CHAT_EVAL, "datasets"))
    fillers = pl.read_parquet(_need(CHUNKS, "chunk")).filter(pl.col("n_tokens").is_between(100, 200))["text"]
    best: RagCase | None = None
    for row in evals.iter_rows(named=True):
        extra = [t for t in fillers.head(PASSAGES * 2) if t not in row["contexts"]]
        passages = [*row["contexts"], *extra][:PASSAGES]
        ids = encode(tokenizer, rag_messages(row["question"], passages))
        case = RagCase(row["question"], passages, ids)
        if best is None or abs(len(ids) - PROMPT_TOKENS) < abs(len(best.ids) - PROMPT_TOKENS):
            best = case
    assert best is not None, f"{CHAT_EVAL} has no rows"
    return best


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformer:
    return load_embedder(_need(EMBEDDER_MODEL, "train_embedder"), device="cpu")


@pytest.fixture(scope="session")
def chunk_texts() -> list[str]:
    """`EMBED_BATCH` chunks sampled with a fixed seed: the mix of lengths the index stage embeds."""
    chunks = pl.read_parquet(_need(CHUNKS, "chunk"))
    return list(chunks.sample(EMBED_BATCH, seed=0)["text"])


@pytest.fixture(scope="session")
def collection() -> Collection:
    """The active Chroma collection, opened as serving/registry.py opens it (queries bring their own vectors)."""
    client = chroma_client(params().index)
    active = read_active(client)
    if active is None:
        pytest.skip(f"no active Chroma index in {params().index.chroma_dir()}: run `dvc repro index` first")
    return client.get_collection(active.collection, embedding_function=None)


@pytest.fixture(scope="session")
def query_vector(embedder: SentenceTransformer, rag_case: RagCase) -> np.ndarray:
    """(dim,) float32: the RAG question embedded once, normalised as serving's embedder does."""
    vec = embedder.encode([rag_case.question], normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vec, dtype=np.float32)[0]


@pytest.fixture(scope="session", params=[CHAT_MODEL, CHAT_INT8_MODEL], ids=["float", "int8"])
def chat(request: pytest.FixtureRequest) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The chat model and tokenizer via `load_chat`, float and int8 in turn (pytest loads one at a time)."""
    stage = "quantize_chat" if request.param == CHAT_INT8_MODEL else "train_chat"
    return load_chat(_need(request.param, stage), device="cpu")
