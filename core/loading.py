"""Model loading: one function per model kind, shared by evaluation, registration and serving.

`source` is a local folder (a pipeline output, or a downloaded MLflow model folder holding an `MLmodel`
file), a `file://` URI of one, or a registry URI (`models:/embedder@champion`, `models:/chat/3`).
Either way the native flavour (sentence-transformers, transformers) comes back, not a pyfunc wrapper,
so callers get batching and generation as the libraries offer them.

Registry URIs go through `core.registry` (download the version into a temporary folder, then load
that folder) rather than through MLflow's own `models:/` resolution: one module resolves aliases, with
one set of errors, whether the caller is the index stage, the register stage or the server (which
downloads into its cache with the same call). MLflow's flavour loaders are still what read an MLflow
model folder: they know each flavour's layout inside it (`model.sentence_transformer/`,
`components/`), which is theirs to change between versions, not ours to copy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.device import pick_device, pick_dtype
from core.quantize import is_quantized_folder, load_quantized
from core.registry import Registry, is_model_uri

if TYPE_CHECKING:
    from core.onnx_embedder import OnnxEmbedder


@contextmanager
def _local_folder(source: str | Path) -> Iterator[Path]:
    """The folder `source` names; a registry version is downloaded into a temporary one, removed after loading.

    Raises:
        FileNotFoundError: `source` is neither an existing folder, a `file://` URI of one, nor a `models:/` URI.
        RegistryError: the registry cannot supply the version (`core.registry`).
    """
    if is_model_uri(source):
        # Removing the files after loading is safe: the weights are in memory (or mmapped, which on Linux
        # keeps the file alive until unmapped).
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            yield Registry().download_uri(str(source), Path(tmp))
        return
    path = Path(unquote(urlparse(source).path)) if isinstance(source, str) and source.startswith("file:") else None
    path = path or Path(source)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model source {str(source)!r} is not a folder: give a model folder, a file:// URI of one, or a registry "
            "URI (`models:/NAME@ALIAS`, `models:/NAME/VERSION`)"
        )
    yield path


def _is_mlflow_folder(folder: Path) -> bool:
    return (folder / "MLmodel").is_file()


def _int8_folder(folder: Path) -> Path | None:
    """The int8 chat folder inside `folder` (itself, or the artifact of a logged `Int8ChatModel`), else None."""
    for candidate in (folder, folder / "artifacts" / "chat_int8"):
        if is_quantized_folder(candidate):
            return candidate
    return None


def load_embedder(source: str | Path, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers embedder.

    Args:
        source: a folder, a `file://` URI or a `models:/` registry URI.
        device: where to put it; None: `core.device.pick_device()`.

    Raises:
        FileNotFoundError: `source` names no folder.
        RegistryError: a registry URI that the registry cannot resolve or supply.
    """
    device = pick_device(device)
    with _local_folder(source) as folder:
        if _is_mlflow_folder(folder):
            import mlflow.sentence_transformers

            return mlflow.sentence_transformers.load_model(str(folder)).to(device)
        return SentenceTransformer(str(folder), device=device)


def load_onnx_embedder(source: str | Path) -> OnnxEmbedder:
    """Load an ONNX embedder (core/onnx_embedder.py: the int8 variant `embedder-int8`, or an fp32 export) on the CPU.

    Args:
        source: a folder, a `file://` URI or a `models:/` registry URI (a pyfunc whose artifact is the folder).

    Raises:
        FileNotFoundError: `source` names no folder, or none holding an ONNX embedder.
        RegistryError: a registry URI that the registry cannot resolve or supply.
    """
    from core.onnx_embedder import OnnxEmbedder, find_onnx_folder

    with _local_folder(source) as folder:
        return OnnxEmbedder(find_onnx_folder(folder), threads=torch.get_num_threads())


def load_reranker(source: str | Path, device: str | None = None) -> CrossEncoder:
    """Load a sentence-transformers cross-encoder (training/reranker.py).

    Args:
        source: a folder, a `file://` URI or a `models:/` registry URI (a pyfunc whose artifact is the model).
        device: where to put it; None: `core.device.pick_device()`.

    Raises:
        FileNotFoundError: `source` names no folder, or a logged model without a cross-encoder inside.
        RegistryError: a registry URI that the registry cannot resolve or supply.
    """
    device = pick_device(device)
    with _local_folder(source) as folder:
        if _is_mlflow_folder(folder):  # logged by core.tracking.log_reranker_model: artifacts/<name>/
            inner = [d for d in sorted((folder / "artifacts").glob("*")) if (d / "config.json").is_file()]
            if not inner:
                raise FileNotFoundError(f"no cross-encoder under {folder}/artifacts")
            folder = inner[0]
        return CrossEncoder(str(folder), device=device)


def load_chat(source: str | Path, device: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode; the tokenizer pads on the left (batched generation).

    Args:
        source: a folder, a `file://` URI or a `models:/` registry URI; an int8 variant (core/quantize.py) too.
        device: where to put it; None: `core.device.pick_device()`. fp32 on CPU, bf16/fp16 on CUDA.

    Raises:
        FileNotFoundError: `source` names no folder.
        ValueError: an int8 variant asked for on a GPU (its kernels are CPU-only).
        RegistryError: a registry URI that the registry cannot resolve or supply.
    """
    device = pick_device(device)
    dtype = pick_dtype(device)
    model: Any
    tok: Any
    with _local_folder(source) as folder:
        int8 = _int8_folder(folder)
        if int8 is not None:
            if not device.startswith("cpu"):
                raise ValueError(
                    f"{source} is an int8 chat model: its dynamic int8 kernels run on the CPU only; on {device}, "
                    "serve the float model (serving.chat_variant: float)"
                )
            model, tok = load_quantized(int8)
        elif _is_mlflow_folder(folder):
            import mlflow.transformers

            parts: dict[str, Any] = mlflow.transformers.load_model(
                str(folder), return_type="components", torch_dtype=dtype
            )
            model, tok = parts["model"], parts["tokenizer"]
        else:
            tok = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = model.to(device).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
