"""Model loading: one function per model kind, shared by evaluation, registration and serving.

`source` is a local folder (a pipeline output) or an MLflow model URI such as
`models:/embedder@champion`; either way the native flavour (sentence-transformers, transformers)
comes back, not a pyfunc wrapper, so callers get batching and generation as the libraries offer them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.device import pick_device, pick_dtype


def _is_mlflow(source: str | Path) -> bool:
    """An MLflow model: a URI (`models:/...`, `runs:/...`, `file://...`) or a folder holding an MLmodel file."""
    if isinstance(source, str) and ":/" in source and not Path(source).exists():
        return True
    return (Path(source) / "MLmodel").is_file()


def load_embedder(source: str | Path, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers embedder from a folder or an MLflow model URI."""
    device = device or pick_device()
    if _is_mlflow(source):
        import mlflow.sentence_transformers

        return mlflow.sentence_transformers.load_model(str(source)).to(device)
    return SentenceTransformer(str(source), device=device)


def load_chat(source: str | Path, device: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a folder or an MLflow model URI, in eval mode.

    The tokenizer pads on the left (batched generation appends on the right).
    """
    device = device or pick_device()
    dtype = pick_dtype(device)
    if _is_mlflow(source):
        import mlflow.transformers

        parts: dict[str, Any] = mlflow.transformers.load_model(str(source), return_type="components", torch_dtype=dtype)
        model, tok = parts["model"], parts["tokenizer"]
    else:
        tok = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    model = model.to(device).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
