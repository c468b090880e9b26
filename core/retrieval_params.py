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
    stemmer: Literal["english", "none"] = "english"
    """BM25's tokens: Snowball-stemmed ("reads" and "reading" match) or as written."""

    def weights(self) -> tuple[float, float]:
        """(dense, lexical), the order `core.fusion` takes the lists in."""
        return (self.dense_weight, self.lexical_weight)
