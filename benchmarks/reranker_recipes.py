"""Reranker training recipes judged on the held-out questions: train a cross-encoder from the shipped MiniLM
weights, then rerank the fine-tuned embedder's hybrid top `retrieval.rerank_candidates`.

    python -m benchmarks.reranker_recipes LOSS LR STEPS MAX_LENGTH BATCH    (after `dvc repro`)
    LOSS: bce (the stage's) | mnrl (in-batch; needs ~10 GB at batch 16) | cmnrl (cached in-batch)

Figures behind the closing note of issue 14: bce at lr 5e-5 and 3e-4 (150 steps, batch 16) both ended with a
training loss of ~0.55-0.58, the constant predictor's being 0.56; mnrl 1e-4 100 192 16 held 9.6 GB and ran
past 15 min before it was stopped.
"""

import sys
import time

import polars as pl
from datasets import Dataset
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder import losses as L
from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

from core import paths
from core.config import params
from core.loading import load_embedder
from evaluation.retrieval import QuestionSet
from training.reranker import mine_pairs

loss_name, lr, steps, maxlen, bs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
p = params()
held_out = pl.read_parquet(paths.EVAL_DOCUMENTS, columns=["doc_id"])["doc_id"]
chunks = pl.read_parquet(paths.CHUNKS, columns=["chunk_id", "doc_id", "text"]).filter(~pl.col("doc_id").is_in(held_out))
pairs = mine_pairs(pl.read_parquet(paths.EMBED_TRAIN_QUESTIONS), chunks, p)
model = CrossEncoder(str(paths.BASE_EMBEDDER), num_labels=1, max_length=maxlen, device="cpu")
if loss_name == "bce":
    ds, loss = Dataset.from_polars(pairs).shuffle(seed=42), L.BinaryCrossEntropyLoss(model)
else:
    rows = []
    for q, g in pairs.group_by("query", maintain_order=True):
        pos = g.filter(pl.col("label") > 0)["passage"].to_list()
        neg = g.filter(pl.col("label") == 0)["passage"].to_list()
        if pos and len(neg) >= 3:
            rows.append({"query": q[0], "positive": pos[0], **{f"neg{i}": neg[i] for i in range(3)}})
    ds = Dataset.from_list(rows).shuffle(seed=42)
    loss = (
        L.MultipleNegativesRankingLoss(model, num_negatives=3)
        if loss_name == "mnrl"
        else L.CachedMultipleNegativesRankingLoss(model, num_negatives=3)
    )
args = CrossEncoderTrainingArguments(
    output_dir="/tmp/exp/ckpt",
    max_steps=steps,
    per_device_train_batch_size=bs,
    learning_rate=lr,
    warmup_steps=0.1,
    logging_steps=20,
    save_strategy="no",
    report_to="none",
    seed=42,
    data_seed=42,
    disable_tqdm=True,
)
t = time.time()
CrossEncoderTrainer(model=model, args=args, train_dataset=ds, loss=loss).train()
tt = time.time() - t
qs = QuestionSet.load(p)
r = qs.mode_rankings(load_embedder(paths.EMBEDDER_MODEL), p)
re, _, ms = qs.rerank(model, r["hybrid"], p)
print(
    "RESULT",
    sys.argv[1:],
    "train_s",
    round(tt),
    "hybrid",
    qs.metrics(r["hybrid"], p),
    "reranked",
    qs.metrics(re, p),
    "ms/q",
    round(ms),
    flush=True,
)
