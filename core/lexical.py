"""The lexical index: BM25 over the chunks (bm25s), saved as files beside the vector collection.

Built by stage `lexical` from the same `chunks.parquet` the vector index embeds, logged into the
registered `retrieval` model, and loaded by the server. bm25s keeps the index as a sparse matrix
(scipy CSC) and scores a query in well under a millisecond per thousand chunks, so there is no
server to run. Tokens are lower-cased words of two or more characters, English stopwords removed,
Snowball-stemmed (params `retrieval.stemmer`); the query gets the same treatment, so the settings
are saved with the index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

_SETTINGS = "lexical.json"


def _stemmer(name: str):  # type: ignore[no-untyped-def]  # PyStemmer ships no type hints
    if name == "none":
        return None
    import Stemmer

    return Stemmer.Stemmer(name).stemWords


@dataclass
class LexicalIndex:
    ids: list[str]
    """Chunk ids, in the order of the BM25 matrix's rows."""
    stemmer: str
    bm25: bm25s.BM25

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], stemmer: str = "english") -> LexicalIndex:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if not ids:
            raise ValueError("no chunks to index")
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(stemmer), show_progress=False)
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=False)
        return cls(list(ids), stemmer, bm25)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(folder), show_progress=False)
        (folder / _SETTINGS).write_text(json.dumps({"stemmer": self.stemmer, "ids": self.ids}))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Read an index written by `save`.

        Raises:
            FileNotFoundError: `folder` holds no lexical index.
        """
        settings = json.loads((folder / _SETTINGS).read_text())
        bm25 = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(list(settings["ids"]), str(settings["stemmer"]), bm25)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """The `k` best chunks per query, best first, as `(chunk id, BM25 score)`; chunks scoring 0 (no
        shared term) are left out, so a list can be shorter than `k`.

        Args:
            allowed: optional 0/1 mask over the chunks (the order of `ids`); only chunks with 1 are returned.
        """
        k = min(k, len(self.ids))
        words = bm25s.tokenize(
            list(queries), stopwords="en", stemmer=_stemmer(self.stemmer), return_ids=False, show_progress=False
        )
        docs, scores = self.bm25.retrieve(words, k=k, show_progress=False, weight_mask=allowed, n_threads=1)
        return [
            [(self.ids[int(d)], float(s)) for d, s in zip(row_d, row_s, strict=True) if s > 0]
            for row_d, row_s in zip(docs, scores, strict=True)
        ]
