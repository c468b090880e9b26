"""The `retrieval:` section of `params.yaml`: how dense and lexical search are combined.

Part of `core.config.Params`, kept beside it for size (like `core/serving_params.py`). The pipeline
measures every mode on the held-out questions (stage `evaluate`) and the register stage records the
best one, with these settings, in the registered `retrieval` model that the server loads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.sections import Section

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")


class RetrievalParams(Section):
    rrf_k: int = Field(default=60, ge=1)
    """Reciprocal rank fusion's constant: a chunk at rank r in one list adds weight / (rrf_k + r)."""
    dense_weight: float = Field(default=1.0, ge=0.0)
    lexical_weight: float = Field(default=1.0, ge=0.0)
    candidates: int = Field(default=50, ge=1, le=1000)
    """Chunks taken from each of dense and lexical search before fusing them (and before reranking)."""
    modes: tuple[Mode, ...] = MODES
    """The modes the register stage chooses among, by the gate metric on the held-out questions; on a tie
    the one listed first wins (so list the cheaper first)."""
    rerank_candidates: int = Field(default=20, ge=1, le=200)
    """How many of the fused (hybrid) chunks the reranker rescores, when one is served; the rest keep their order.
    Its cost is linear in this: one cross-encoder forward per candidate."""
    abstain_min_answered: float | None = Field(default=0.9, gt=0, le=1)
    """RAG's abstention threshold is the highest that still answers this share of the held-out questions
    (evaluation/abstention.py); null: the threshold that best separates answerable from unanswerable."""
    stemmer: Literal["english", "none"] = "english"
    """BM25's tokens: Snowball-stemmed ("reads" and "reading" match) or as written."""

    def weights(self) -> tuple[float, float]:
        """(dense, lexical), the order `core.fusion` takes the lists in."""
        return (self.dense_weight, self.lexical_weight)


class TrainRerankerParams(Section):
    """Stage `train_reranker`: a cross-encoder fine-tuned from the shipped MiniLM weights (training/reranker.py)."""

    max_questions: int = Field(default=600, ge=1)
    """Held-in questions (data/questions.py) used, each with its passage and mined negatives."""
    negatives: int = Field(default=3, ge=1)
    """Hard negatives per question: chunks of other documents that BM25 ranks high for it."""
    mine_depth: int = Field(default=10, ge=1)
    """Negatives are drawn from this many top BM25 chunks of other documents."""
    max_steps: int = Field(default=60, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=256, ge=32, le=512)
    """Question + passage tokens per pair (training and serving)."""
    logging_steps: int = Field(default=10, ge=1)
