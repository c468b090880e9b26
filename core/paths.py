"""Where things live. Pipeline outputs go under `artifacts/` (DVC outs, git-ignored); mutable
local state (MLflow artifacts, Chroma, W&B, caches) under `state/` (git-ignored); the MLflow database is
`mlflow.db` in the root, where `mlflow ui` looks by default (`core.config.tracking_uri`).

The root and the download cache come from the environment through `core.config` (`MODELPLATFORM_ROOT`,
`MODELPLATFORM_CACHE`). The `artifacts/` paths are also named in `dvc.yaml`; `tests/code/test_paths.py`
checks that the two agree.
"""

from __future__ import annotations

from core.config import PROJECT_ROOT, environment

__all__ = ["PROJECT_ROOT"]  # re-exported: most modules take the root from here with the other paths

ARTIFACTS = PROJECT_ROOT / "artifacts"
STATE = PROJECT_ROOT / "state"

BASE_CHAT = ARTIFACTS / "base" / "chat"
BASE_EMBEDDER = ARTIFACTS / "base" / "embedder"

DOCUMENTS = ARTIFACTS / "data" / "documents.parquet"
INGEST_REPORT = ARTIFACTS / "data" / "ingest_report.json"
CHUNKS = ARTIFACTS / "data" / "chunks.parquet"
CHUNKING = ARTIFACTS / "metrics" / "chunking.json"
"""Stage `select_chunking`: the chunking every later stage uses, and every candidate's scores."""
DATASETS = ARTIFACTS / "datasets"
EMBED_TRAIN = DATASETS / "embed_train.parquet"
EMBED_EVAL_QUERIES = DATASETS / "embed_eval_queries.parquet"
EMBED_EVAL_CORPUS = DATASETS / "embed_eval_corpus.parquet"
CHAT_TRAIN = DATASETS / "chat_train.parquet"
CHAT_EVAL = DATASETS / "chat_eval.parquet"
DATASETS_STATS = DATASETS / "stats.json"
EVAL_QUESTIONS = DATASETS / "eval_questions.parquet"
EVAL_DOCUMENTS = DATASETS / "eval_documents.parquet"
QUESTIONS_STATS = DATASETS / "questions_stats.json"
EMBED_TRAIN_QUESTIONS = DATASETS / "embed_train_questions.parquet"
TRAIN_QUESTIONS = DATASETS / "train_questions.parquet"

EMBEDDER_MODEL = ARTIFACTS / "models" / "embedder"
CHAT_MODEL = ARTIFACTS / "models" / "chat"
TRAIN_EMBEDDER_METRICS = ARTIFACTS / "metrics" / "train_embedder.json"
TRAIN_CHAT_METRICS = ARTIFACTS / "metrics" / "train_chat.json"
EMBEDDER_LOSS_PLOT = ARTIFACTS / "plots" / "embedder_loss.csv"
RERANKER_MODEL = ARTIFACTS / "models" / "reranker"
TRAIN_RERANKER_METRICS = ARTIFACTS / "metrics" / "train_reranker.json"
RERANKER_LOSS_PLOT = ARTIFACTS / "plots" / "reranker_loss.csv"
CHAT_LOSS_PLOT = ARTIFACTS / "plots" / "chat_loss.csv"
CHAT_INT8_MODEL = ARTIFACTS / "models" / "chat_int8"
QUANTIZE_CHAT_METRICS = ARTIFACTS / "metrics" / "quantize_chat.json"
EMBEDDER_INT8_MODEL = ARTIFACTS / "models" / "embedder_int8"
QUANTIZE_EMBEDDER_METRICS = ARTIFACTS / "metrics" / "quantize_embedder.json"
RERANKER_INT8_MODEL = ARTIFACTS / "models" / "reranker_int8"
QUANTIZE_RERANKER_METRICS = ARTIFACTS / "metrics" / "quantize_reranker.json"

EVAL_METRICS = ARTIFACTS / "metrics" / "evaluate.json"
RECALL_PLOT = ARTIFACTS / "plots" / "recall_at_k.csv"
ANSWERS_REPORT = ARTIFACTS / "reports" / "answers.json"
REGISTER_REPORT = ARTIFACTS / "reports" / "register.json"
RAG_METRICS = ARTIFACTS / "metrics" / "rag.json"
RAG_REPORT = ARTIFACTS / "reports" / "rag_answers.json"
INDEX_MANIFEST = ARTIFACTS / "index" / "manifest.json"
LEXICAL_INDEX = ARTIFACTS / "index" / "lexical"
PIPELINE_REPORT = ARTIFACTS / "reports" / "pipeline.html"
"""Stage `report`: the run as one HTML page (evaluation/report.py)."""
CHUNK_TOKENS_PLOT = ARTIFACTS / "plots" / "chunk_tokens.csv"

MODEL_CACHE = environment().cache
"""Downloaded wheels and other inputs shared by every copy of the project on this machine."""
