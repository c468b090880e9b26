"""The registered `retrieval` model: what the server searches with, as one versioned unit; and the
`reranker`'s pyfunc (a cross-encoder, registered on its own and named by the unit when it passed the gate).

A version records the embedder version, the chunking, the default mode chosen by measurement, the
fusion settings and the held-out scores (`retrieval.json`), and carries the chunks and the lexical index,
so a fresh server pointed at the registry and the vector store can serve it, and the index stage builds
the vector collection from the unit alone (the embedder version it names, over the chunks it carries).
Written by the register stage, read by the server (`serving/registry.py`). Logged as an MLflow pyfunc
whose `predict` runs the lexical half (the dense half needs the vector store):
`mlflow.pyfunc.load_model("models:/retrieval@champion")` answers `["how do I ..."]` with chunk ids and BM25 scores.

Folder layout (the pyfunc artifact `retrieval`):
    retrieval.json   RetrievalConfig
    chunks.parquet   the chunks both indexes hold (data/chunk.py's schema; md5 = `chunks_md5`)
    lexical/         core.lexical.LexicalIndex
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict

from core.errors import AliasNotFound
from core.lexical import LexicalIndex
from core.retrieval_params import Mode, RetrievalParams
from core.serving_params import Variant

if TYPE_CHECKING:
    from core.registry import Registry

CONFIG_FILE = "retrieval.json"
CHUNKS_FILE = "chunks.parquet"
LEXICAL_DIR = "lexical"
ARTIFACT = "retrieval"
"""The pyfunc artifact's key."""


class RetrievalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    embedder_name: str
    embedder_version: str
    embedder_int8_name: str | None = None
    embedder_int8_version: str | None = None
    """The registered int8 form of `embedder_version` (stage `quantize_embedder`) that `serving.embedder_variant: int8`
    searches with, over its own collection; None when there is none (its gate refused, or the unit searches with an
    embedder that was not the fine-tuned candidate of this run)."""
    chunks_md5: str
    """The chunks both indexes were built from; the active Chroma collection must carry the same."""
    chunking: dict[str, Any]
    mode: Mode
    """What `/v1/search` and RAG use when a request does not say."""
    rrf_k: int
    dense_weight: float
    lexical_weight: float
    candidates: int
    stemmer: str
    reranker_name: str | None = None
    reranker_version: str | None = None
    """The cross-encoder that rescores the first `rerank_candidates` results, or None when reranking did not pass
    the gate."""
    reranker_int8_name: str | None = None
    reranker_int8_version: str | None = None
    """The registered int8 form of `reranker_version` (stage `quantize_reranker`) that `serving.reranker_variant: int8`
    reranks with; None when the unit does not rerank or no int8 form passed its gate."""
    rerank_candidates: int = 20
    abstain_threshold: float | None = None
    """RAG answers only when the best hit scores at least this (measured on held-out questions); None: always."""
    abstain_score: Literal["dense", "reranker"] | None = None
    """Which score the threshold is on: the reranker's relevance, or dense search's cosine similarity."""
    metric: str
    scores: dict[str, dict[str, float]]
    """Held-out question scores: the champion embedder's per mode, `served` (what this version serves), `reranked` and
    `naive`, as measured when this version was chosen."""
    reasons: list[str]

    @classmethod
    def of(cls, rp: RetrievalParams, **fields: Any) -> RetrievalConfig:
        return cls(
            rrf_k=rp.rrf_k,
            dense_weight=rp.dense_weight,
            lexical_weight=rp.lexical_weight,
            candidates=rp.candidates,
            stemmer=rp.stemmer,
            rerank_candidates=rp.rerank_candidates,
            **fields,
        )

    def embedder(self, variant: Variant = "float") -> tuple[str, str] | None:
        """The registered (name, version) that embeds for `variant`; None when the unit has no such form."""
        if variant == "float":
            return self.embedder_name, self.embedder_version
        if self.embedder_int8_name and self.embedder_int8_version:
            return self.embedder_int8_name, self.embedder_int8_version
        return None

    def reranker(self, variant: Variant = "float") -> tuple[str, str] | None:
        """The registered (name, version) that reranks for `variant`; None when the unit has no such form."""
        if variant == "float":
            return (self.reranker_name, self.reranker_version) if self.reranker_name and self.reranker_version else None
        if self.reranker_int8_name and self.reranker_int8_version:
            return self.reranker_int8_name, self.reranker_int8_version
        return None

    def weights(self) -> tuple[float, float]:
        return (self.dense_weight, self.lexical_weight)

    def abstains(self, best: float | None, kind: Literal["dense", "reranker"] | None, min_score: float | None) -> bool:
        """Whether RAG should decline to answer from these hits: their best score is below `min_score`, or, with no
        `min_score`, below the registered threshold when that was measured on this `kind` of score (the
        reranker's relevance, or dense cosine; None: lexical only, which has no fixed scale). Never without a
        threshold that applies. The server (serving/engines/retriever.py) and the RAG evaluation both judge by it."""
        threshold = min_score
        if threshold is None and kind is not None and kind == self.abstain_score:
            threshold = self.abstain_threshold
        return threshold is not None and (best is None or best < threshold)

    @property
    def chunking_name(self) -> str:
        """`tokens-200-32`, or `chars-1000-200` when the naive recipe is served (core.config.ChunkParams.name)."""
        from core.config import ChunkParams

        return ChunkParams.model_validate(self.chunking).name


def write_unit(folder: Path, config: RetrievalConfig, lexical_dir: Path, chunks_file: Path) -> None:
    """Assemble the folder that gets logged: the config and copies of the chunks and the lexical index."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    shutil.copyfile(chunks_file, folder / CHUNKS_FILE)
    shutil.copytree(lexical_dir, folder / LEXICAL_DIR)


def unit_chunks(folder: Path) -> Path:
    """The chunks file of a unit folder (see `find_unit`).

    Raises:
        FileNotFoundError: the unit carries no chunks (registered before units did).
    """
    path = find_unit(folder) / CHUNKS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the retrieval version predates units carrying their chunks")
    return path


class UnitUnavailable(RuntimeError):
    """The retrieval champion is missing, unreadable, or carries chunks other than the ones it names."""


def champion_unit(
    name: str, alias: str, dest: Path, registry: Registry | None = None
) -> tuple[str, RetrievalConfig, pl.DataFrame]:
    """The served retrieval unit (`name@alias`): its version, config and chunks, downloaded into `dest`.

    Args:
        registry: where to look; None: the configured one (`core.config.tracking_uri`).

    Raises:
        UnitUnavailable: there is no such alias yet, or the version cannot be read or carries other chunks.
        RegistryUnreachable: the registry cannot be reached.
    """
    from core.registry import Registry
    from core.tracking import file_md5

    registry = registry or Registry()
    try:
        version = registry.resolve(name, alias)
    except AliasNotFound as e:
        raise UnitUnavailable(
            f"no `{name}@{alias}` in the registry: the register stage has not run yet "
            "(see artifacts/reports/register.json)"
        ) from e
    folder = registry.download(name, version, dest)
    try:
        config, _ = read_unit(folder)
        chunks = unit_chunks(folder)
    except (OSError, ValueError) as e:
        raise UnitUnavailable(f"cannot read {name} version {version}: {e}; rerun `dvc repro register`") from e
    if file_md5(chunks) != config.chunks_md5:
        raise UnitUnavailable(f"{name} version {version} carries chunks other than the ones it names (md5 mismatch)")
    return version, config, pl.read_parquet(chunks)


def find_unit(model_dir: Path) -> Path:
    """The unit's folder inside a downloaded model version (or the folder itself, when given that).

    Raises:
        FileNotFoundError: neither holds a `retrieval.json`.
    """
    # MLflow copies the artifact folder under its own name: artifacts/<folder name>/
    for candidate in (model_dir, *sorted((model_dir / "artifacts").glob("*"))):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no {CONFIG_FILE} in {model_dir} or in a folder of its artifacts/")


def read_unit(folder: Path) -> tuple[RetrievalConfig, LexicalIndex]:
    """The config and the lexical index of a unit folder (see `find_unit`)."""
    unit = find_unit(folder)
    config = RetrievalConfig.model_validate(json.loads((unit / CONFIG_FILE).read_text()))
    return config, LexicalIndex.load(unit / LEXICAL_DIR)


class LexicalSearchModel(PythonModel):  # type: ignore[misc]
    """The pyfunc: a list of queries -> per query, the BM25 top chunks (`params={"top_k": n}`, default 10)."""

    top_k = 10

    def load_context(self, context: Any) -> None:
        self.config, self.index = read_unit(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        queries = [str(q) for q in model_input]
        k = int((params or {}).get("top_k", self.top_k))
        return [
            {"query": q, "chunk_ids": [c for c, _ in hits], "scores": [s for _, s in hits]}
            for q, hits in zip(queries, self.index.search(queries, k), strict=True)
        ]


class RerankerModel(PythonModel):  # type: ignore[misc]
    """The reranker's pyfunc: `[{"query": ..., "passage": ...}, ...]` -> one relevance score per pair."""

    def load_context(self, context: Any) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model = CrossEncoder(context.artifacts["reranker"], device="cpu")

    def predict(
        self, context: Any, model_input: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> list[float]:
        pairs = [(str(row["query"]), str(row["passage"])) for row in model_input]
        return [float(s) for s in self.model.predict(pairs, show_progress_bar=False)] if pairs else []
