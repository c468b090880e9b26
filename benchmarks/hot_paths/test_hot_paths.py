"""In-process micro-benchmarks of the serving hot paths, on the real models and data (pytest-benchmark).

Run (from the project root):

    .venv/bin/pytest benchmarks/hot_paths --benchmark-autosave --benchmark-compare

`--benchmark-autosave` saves each run's JSON under `.benchmarks/` (git-ignored) and `--benchmark-compare`
prints it beside the previous saved run; `--benchmark-disable` runs each once as a plain test (a smoke check).
`make test` never runs these: pyproject's `testpaths = ["tests"]` collects `tests/` only, and naming this
folder on the command line overrides that.

What is measured is the step alone: models, data and the RAG prompt (~800 tokens, 5 passages) are loaded by
conftest.py once per session. The asserts check sanity (shapes, counts), never timings: numbers from a shared
2-core CPU are for comparing runs, not for failing them. Results are grouped so that float and int8 sit side by
side in `--benchmark-compare`'s table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from chromadb import Collection
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.prompts import rag_messages
from serving.engines.generation.batch import Batch
from serving.engines.generation.forward import decode, prefill
from serving.engines.generation.sampling import GREEDY, sample

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from benchmarks.hot_paths.conftest import RagCase

Chat = tuple[PreTrainedModel, PreTrainedTokenizerBase]
TOP_K = 10
DECODE_ROUNDS = 20  # fixed: pedantic mode (the cache is reset before each round) does not calibrate


def greedy(logits: torch.Tensor, rows: list[Any]) -> torch.Tensor:
    """The engine's pick for plain greedy rows (as `ChatEngine.warmup` passes it): (B, vocab) -> (B,)."""
    return sample(logits, [GREEDY] * len(rows))


# ---- prompt building and tokenisation (CPU work per request before the model runs) ------------------------


def test_build_prompt(benchmark: Any, tokenizer: PreTrainedTokenizerBase, rag_case: RagCase) -> None:
    """rag_messages + the chat template rendered to text: the Jinja half of `ChatEngine.encode_messages`."""
    benchmark.group = "prompt"

    def build() -> str:
        messages = rag_messages(rag_case.question, rag_case.passages)
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    text = benchmark(build)
    assert rag_case.question in text and f"[{len(rag_case.passages)}]" in text


def test_tokenize_rag_prompt(benchmark: Any, tokenizer: PreTrainedTokenizerBase, rag_case: RagCase) -> None:
    """The rendered RAG prompt through the fast tokenizer: the other half of `encode_messages`."""
    benchmark.group = "prompt"
    text = str(tokenizer.apply_chat_template(rag_case.messages(), tokenize=False, add_generation_prompt=True))
    # the template brings its own special tokens, as apply_chat_template(tokenize=True) assumes
    ids = benchmark(lambda: tokenizer(text, add_special_tokens=False)["input_ids"])
    benchmark.extra_info["prompt_tokens"] = len(ids)
    assert ids == rag_case.ids  # the same ids the engine would prefill


# ---- retrieval: embedding and the vector store -------------------------------------------------------------


def test_embed_batch(benchmark: Any, embedder: SentenceTransformer, chunk_texts: list[str]) -> None:
    """One embedding batch of chunk-sized texts, called as serving/engines/embedder.py calls it."""
    benchmark.group = "retrieval"
    benchmark.extra_info["chars"] = sum(len(t) for t in chunk_texts)
    out = benchmark(embedder.encode, chunk_texts, normalize_embeddings=True, convert_to_numpy=True)
    assert out.shape == (len(chunk_texts), embedder.get_sentence_embedding_dimension())  # (32, dim)
    assert np.isfinite(out).all()


def test_vector_query(benchmark: Any, collection: Collection, query_vector: np.ndarray) -> None:
    """One dense query against the active collection, with the include list serving/engines/retriever.py asks for."""
    benchmark.group = "retrieval"
    benchmark.extra_info["collection_count"] = collection.count()
    res = benchmark(
        collection.query,
        query_embeddings=[query_vector.tolist()],
        n_results=TOP_K,
        include=["documents", "metadatas", "distances"],
    )
    assert len(res["ids"][0]) == TOP_K and len(res["documents"][0]) == TOP_K


# ---- the chat engine's forward steps (serving/engines/generation/forward.py), float and int8 ---------------


def test_prefill(benchmark: Any, chat: Chat, rag_case: RagCase) -> None:
    """`prefill` of one RAG prompt: the time to first token, less queueing and detokenising."""
    model, tok = chat
    benchmark.group = "prefill rag prompt"
    benchmark.extra_info["prompt_tokens"] = len(rag_case.ids)
    batch = benchmark(prefill, model, [0], [rag_case.ids], tok.pad_token_id, greedy)
    assert batch.mask.shape == (1, len(rag_case.ids)) and batch.next.shape == (1, 1)
    assert batch.cache.get_seq_length() == len(rag_case.ids)


@pytest.mark.parametrize("rows", [1, 16], ids=["b1", "b16"])  # 16: serving.chat_max_batch_size
def test_decode_step(benchmark: Any, chat: Chat, rag_case: RagCase, rows: int) -> None:
    """One `decode` step of a running batch whose rows each hold the RAG prompt in the cache.

    The batch comes from `prefill` itself (identical prompts are run once and their cache rows copied, as the
    engine does for them). `decode` grows the cache in place, so each round starts from the same prefilled
    state: the per-layer tensors are put back before it, untimed (DynamicLayer.update concatenates into new
    tensors, so the saved ones are never written to).
    """
    model, tok = chat
    benchmark.group = f"decode step {rows} row(s)"
    benchmark.extra_info["context_tokens"] = len(rag_case.ids)
    batch: Batch[int] = prefill(model, list(range(rows)), [rag_case.ids] * rows, tok.pad_token_id, greedy)
    layers: list[Any] = list(batch.cache.layers)  # DynamicLayer: .keys/.values (B, kv_heads, L, head_dim)
    saved = [(layer.keys, layer.values) for layer in layers]
    mask, next_ = batch.mask, batch.next  # (B, L), (B, 1)

    def reset() -> None:
        for layer, (keys, values) in zip(layers, saved, strict=True):
            layer.keys, layer.values = keys, values
        batch.mask, batch.next = mask, next_

    tokens = benchmark.pedantic(decode, args=(model, batch, greedy), setup=reset, rounds=DECODE_ROUNDS, warmup_rounds=1)
    assert tokens.shape == (rows,)  # (B,)
    assert batch.mask.shape == (rows, len(rag_case.ids) + 1)
    assert batch.cache.get_seq_length() == len(rag_case.ids) + 1
