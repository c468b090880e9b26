"""Stage `base_models`: materialise both base models from their specs into `artifacts/base/`.

The chat base ships as a GGUF file; transformers dequantises it on load, but the loaded model still
carries a GGUF `quantization_config` and cannot be `save_pretrained`-ed as is, so it is rebuilt from
its config and state dict into a plain fp32 transformers checkpoint (done once, here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import paths
from core.config import params
from core.log import get_logger
from core.specs import resolve
from training.common import swap_dir

log = get_logger(__name__)


def materialise_chat(spec: str, out: Path) -> Path:
    """Write the chat base model named by `spec` as a transformers checkpoint in `out`."""
    src = Path(resolve(spec))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if src.is_file() and src.suffix == ".gguf":
        log.info("dequantising GGUF %s", src.name)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
    else:
        tok = AutoTokenizer.from_pretrained(str(src))
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    swap_dir(tmp, out)
    log.info("chat base written to %s", out)
    return out


def materialise_embedder(spec: str, out: Path) -> Path:
    """Write the embedding base model named by `spec` as a sentence-transformers folder in `out`."""
    src = resolve(spec)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    SentenceTransformer(src, device="cpu").save(str(tmp))
    swap_dir(tmp, out)
    log.info("embedder base written to %s", out)
    return out


def main() -> None:
    p = params()
    paths.BASE_CHAT.parent.mkdir(parents=True, exist_ok=True)
    materialise_embedder(p.models.embedder_base, paths.BASE_EMBEDDER)
    materialise_chat(p.models.chat_base, paths.BASE_CHAT)


if __name__ == "__main__":
    main()
