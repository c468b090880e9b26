"""Which training pairs make the better embedder, judged as the gate judges: `python -m benchmarks.embedder_pairs`.

Trains the base embedder once per choice of `train_embedder.pairs` (questions, headings, both; the other
knobs as in params.yaml) and scores each, and the base and naive recipe, on the held-out questions over
the same chunks as the evaluate stage (`evaluation.retrieval.QuestionSet`). Needs the pipeline's
`questions` and `datasets` outputs (`dvc repro questions datasets`). Runs are tracked in a throwaway
MLflow database, so the project's registry is untouched. About 3 minutes per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

VARIANTS = (("headings",), ("questions",), ("questions", "headings"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=None, help="train_embedder.max_steps (default: params.yaml's)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="embedder-pairs-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"  # before core.config reads it
    os.environ.setdefault("WANDB_MODE", "disabled")

    from core import paths
    from core.config import params
    from core.loading import load_embedder
    from evaluation.retrieval import QuestionSet
    from training.embedder import read_pairs, train_embedder

    p = params()
    qs = QuestionSet.load(p)
    base = load_embedder(paths.BASE_EMBEDDER)
    rows = {"naive": qs.score(base, p, naive=True), "base": qs.score(base, p)}
    steps = args.steps or p.train_embedder.max_steps
    for kinds in VARIANTS:
        cfg = p.train_embedder.model_copy(update={"pairs": kinds, "max_steps": steps})
        variant = p.model_copy(update={"train_embedder": cfg})
        out = scratch / "+".join(kinds)
        train_embedder(variant, paths.BASE_EMBEDDER, read_pairs(kinds), out)
        rows["+".join(kinds)] = qs.score(load_embedder(out), p)
    print(f"held-out questions: {qs.questions.height}, steps: {steps}")
    print("| embedder | " + " | ".join(rows["base"]) + " |")
    print("|---" * (len(rows["base"]) + 1) + "|")
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in m.values()) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
