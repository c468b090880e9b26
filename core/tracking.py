"""Experiment tracking: every training and evaluation run goes to MLflow and to W&B.

MLflow holds params, per-step metrics, logged models and dataset lineage; W&B gets the same params and
metrics (offline unless a key is configured); models and data stay in MLflow and DVC because offline
W&B artifacts are fragile (wandb #5712, #3098). Every MLflow run call of the pipeline is here:

    tracked_run          a new run (training), mirrored to W&B
    resume_run           reopen the run that trained a model (evaluate, register)
    log_heldout_metrics  held-out scores onto that run
    log_embedder_model / log_chat_model / log_datasets   the model and its lineage, inside a run
    log_retrieval_model  the retrieval unit (config + lexical index), in a run of its own
    log_reranker_model   the cross-encoder, inside its training run

Registering, tagging and promoting versions is `core.registry`'s job.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from core.config import params, tracking_uri, wandb_mode
from core.log import get_logger
from core.paths import PROJECT_ROOT, STATE

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = get_logger(__name__)


def setup_mlflow() -> str:
    """Point MLflow at the configured tracking URI and make sure the experiment exists.

    With the embedded sqlite default, the experiment's artifact location is pinned inside this
    copy's `state/` folder: MLflow fixes it as an absolute path at creation time, and the default
    (`./mlruns` of whatever the working folder was) would scatter artifacts across copies.

    Returns:
        The experiment id.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = params().tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = (STATE / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        exp_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def file_md5(path: Path) -> str:
    """md5 of a file's bytes: the same hash DVC records for a file output."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The current commit, suffixed `-dirty` when tracked files have changes; `unknown` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def lineage_tags(data_files: Mapping[str, Path]) -> dict[str, str]:
    """Tags that tie a run or model version to its code and data: git commit and data md5s."""
    tags = {"git_commit": git_commit()}
    for name, path in data_files.items():
        tags[f"data.{name}.md5"] = file_md5(path)
    return tags


@dataclass
class Tracker:
    """One run, logged to MLflow and W&B together; also keeps the metric history for DVC plots."""

    run_id: str
    wandb_run: Any = None
    history: list[dict[str, float]] = field(default_factory=list)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items()}
        mlflow.log_metrics(clean, step=step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(clean), step=step)
        self.history.append({"step": float(step or 0), **clean})


def _init_wandb(run_name: str, config: Mapping[str, Any], group: str) -> Any:
    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb  # imported lazily: it is slow to import and absent from serving paths

    wdir = STATE / "wandb"
    wdir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=params().tracking.wandb_project,
        name=run_name,
        group=group,
        config=dict(config),
        mode=mode,  # type: ignore[arg-type]
        dir=str(wdir),
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )


@contextmanager
def tracked_run(run_name: str, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """Start an MLflow run and a W&B run with the same name, params and tags.

    Args:
        run_name: e.g. `train_embedder`.
        config: flat or nested params, logged as MLflow params (flattened) and the W&B config.
        tags: extra MLflow tags (lineage).
    """
    setup_mlflow()
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        mlflow.log_params(_flatten(config))
        wb = _init_wandb(run_name, config, group=run.info.run_id)
        tracker = Tracker(run_id=run.info.run_id, wandb_run=wb)
        try:
            yield tracker
        finally:
            if wb is not None:
                wb.finish()


_STAND_INS: dict[str, str] = {}
"""Training run id -> the run standing in for it in this tracking store (`resume_run`), per process."""


@contextmanager
def resume_run(run_id: str) -> Iterator[None]:
    """Reopen an existing MLflow run (the one that trained a model) so later stages log into it.

    When this tracking store does not know the run (the model was trained while MLflow pointed elsewhere, e.g.
    the embedded database, before `MLFLOW_TRACKING_URI` named the team's server), a run is started in its place,
    tagged `trained_in_run` with the original id, and later resumes of that id in this process reopen it: the
    model is still logged and registered, and its lineage says where training was recorded.

    Args:
        run_id: the run's id, as the training stage wrote it to its metrics file.
    """
    from mlflow.exceptions import MlflowException

    setup_mlflow()
    target = _STAND_INS.get(run_id, run_id)
    try:
        mlflow.get_run(target)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("run %s is not in %s; logging into a new run that stands in for it", run_id, tracking_uri())
        with mlflow.start_run(run_name=f"stand-in-{run_id[:8]}", tags={"trained_in_run": run_id}) as run:
            _STAND_INS[run_id] = run.info.run_id
            yield
        return
    with mlflow.start_run(run_id=target):
        yield


def log_heldout_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Attach held-out scores to the run that trained the model, as `heldout_<metric>` (`@` -> `_at_`)."""
    with resume_run(run_id):
        mlflow.log_metrics({f"heldout_{k.replace('@', '_at_')}": float(v) for k, v in metrics.items()})


def log_datasets(files: Mapping[str, tuple[Path, str]]) -> None:
    """Record parquet datasets as inputs of the active run (`mlflow.log_input`), for lineage.

    Args:
        files: dataset name -> (parquet file, context such as `training` or `evaluation`).
    """
    import mlflow.data
    import polars as pl

    for name, (path, context) in files.items():
        df = pl.read_parquet(path).to_pandas()
        source = str(path.relative_to(PROJECT_ROOT))
        ds = mlflow.data.from_pandas(df, source=source, name=name)  # type: ignore[attr-defined]
        mlflow.log_input(ds, context=context)


def log_embedder_model(model: SentenceTransformer, name: str, example: list[str], pip_requirements: list[str]) -> str:
    """Log a sentence-transformers model into the active run, with a signature inferred from `example`.

    Returns:
        The logged model's URI (`models:/<model_id>`), for `core.registry.Registry.register`.
    """
    import mlflow.sentence_transformers
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.encode(example))
    info = mlflow.sentence_transformers.log_model(
        model, name=name, signature=signature, input_example=example, pip_requirements=pip_requirements
    )
    return str(info.model_uri)


def log_chat_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    example: Mapping[str, Any],
    pip_requirements: list[str],
) -> str:
    """Log a causal LM and its tokenizer into the active run as an `llm/v1/chat` transformers model.

    Returns:
        The logged model's URI (`models:/<model_id>`), for `core.registry.Registry.register`.
    """
    import mlflow.transformers

    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=name,
        task="llm/v1/chat",
        input_example=dict(example),
        pip_requirements=pip_requirements,
    )
    return str(info.model_uri)


def log_retrieval_model(
    folder: Path, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str], pip_requirements: list[str]
) -> str:
    """Log a retrieval unit (core/retrieval_unit.py) as a pyfunc, in a run of its own with `config` as params.

    Returns:
        The logged model's URI (`models:/<model_id>`), for `core.registry.Registry.register`.
    """
    import mlflow.pyfunc

    from core.retrieval_unit import ARTIFACT, LexicalSearchModel

    setup_mlflow()
    with mlflow.start_run(run_name=run_name, tags=dict(tags)):
        mlflow.log_params(_flatten(config))
        info = mlflow.pyfunc.log_model(
            name="retrieval",
            python_model=LexicalSearchModel(),
            artifacts={ARTIFACT: str(folder)},
            input_example=["How do I read a file line by line?"],
            pip_requirements=pip_requirements,
        )
    return str(info.model_uri)


def _log_folder_pyfunc(name: str, python_model: Any, folder: Path, example: Any, pip_requirements: list[str]) -> str:
    """Log a model folder as the artifact `name` of a pyfunc (its loader reads the folder back), into the active run.

    Returns:
        The logged model's URI (`models:/<model_id>`), for `core.registry.Registry.register`.
    """
    import mlflow.pyfunc

    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        artifacts={name: str(folder)},
        input_example=example,
        pip_requirements=pip_requirements,
    )
    return str(info.model_uri)


def log_reranker_model(model_dir: Path, pip_requirements: list[str]) -> str:
    """Log a cross-encoder folder (training/reranker.py) into the active run as a pyfunc."""
    from core.retrieval_unit import RerankerModel

    example = [{"query": "How do I read a file?", "passage": "open() returns a file object."}]
    return _log_folder_pyfunc("reranker", RerankerModel(), model_dir, example, pip_requirements)


def log_int8_chat_model(model_dir: Path, pip_requirements: list[str]) -> str:
    """Log an int8 chat folder (core/quantize.py `save_quantized`) into the active run as a pyfunc."""
    from core.quantize import Int8ChatModel

    example = [{"role": "user", "content": "What does json.dumps do?"}]
    return _log_folder_pyfunc("chat_int8", Int8ChatModel(), model_dir, example, pip_requirements)


def log_int8_embedder_model(model_dir: Path, pip_requirements: list[str]) -> str:
    """Log an int8 ONNX embedder folder (core/onnx_embedder.py `quantize`) into the active run as a pyfunc."""
    from core.onnx_embedder import OnnxEmbedderModel

    example = ["json: dumps", "How do I read a file line by line?"]
    return _log_folder_pyfunc("embedder_int8", OnnxEmbedderModel(), model_dir, example, pip_requirements)


def log_int8_reranker_model(model_dir: Path, pip_requirements: list[str]) -> str:
    """Log an int8 ONNX reranker folder (core/onnx_reranker.py `quantize`) into the active run as a pyfunc."""
    from core.onnx_reranker import OnnxRerankerModel

    example = [{"query": "How do I read a file?", "passage": "open() returns a file object."}]
    return _log_folder_pyfunc("reranker_int8", OnnxRerankerModel(), model_dir, example, pip_requirements)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out
