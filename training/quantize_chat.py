"""Stage `quantize_chat`: the int8 variant of the fine-tuned chat candidate, measured against it.

    calibrate   activation maxima of the float model over training examples (prompt + answer)
    smooth      SmoothQuant's exact rewrite, then int8 weights per output channel (core/quantize.py)
    save        artifacts/models/chat_int8 (reloaded from disk for everything below: the saved form is scored)
    measure     held-out loss and answer F1 (the same examples and code as stage `evaluate`, whose float
                figures it reuses), the share of answer steps where the int8 model's top token is the float
                model's, and one-stream greedy tokens/s of both (reported, never gated: it depends on the machine)
    gate        passed when the int8 loss exceeds the float loss by less than `gate.int8_max_loss_increase`

Stage `register` registers the variant under `models.chat_int8_name` only when the gate passed, and gives it
the float version's alias when the float version gets it.
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import polars as pl
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core import paths
from core.config import Params, params
from core.io import write_json
from core.loading import load_chat
from core.log import get_logger
from core.quantize import METHOD, load_quantized, quantize_with_recipe, save_quantized
from evaluation.chat_quality import answer_quality, heldout_loss, top_token_agreement
from training.chat import encode_frame
from training.common import seed_everything, swap_dir

log = get_logger(__name__)


def tokens_per_second(model: PreTrainedModel, tok: PreTrainedTokenizerBase, n_tokens: int) -> float:
    """One stream of `n_tokens` greedy tokens after a short prompt (after one warm-up call)."""
    enc: Any = tok.apply_chat_template(
        [{"role": "user", "content": "Explain what a Python decorator is."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    ids = enc["input_ids"]
    kw = {"do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, **kw)  # type: ignore[operator]
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, **kw)  # type: ignore[operator]
    return round(n_tokens / (time.perf_counter() - start), 1)


def gate(p: Params, float_loss: float, int8_loss: float) -> tuple[bool, str]:
    increase = round(int8_loss - float_loss, 4)
    limit = p.gate.int8_max_loss_increase
    if increase < limit:
        return True, f"held-out loss {int8_loss} is {increase:+.4f} from the float model's {float_loss} (< {limit})"
    return False, (
        f"held-out loss {int8_loss} is {increase:+.4f} from the float model's {float_loss}, not under {limit}: "
        "not registered (lower quantize_chat.alpha, quantise per token with quantize_chat.per_token, or keep modules "
        "in float with quantize_chat.skip)"
    )


def run(p: Params) -> dict[str, object]:
    seed_everything(p.seed)
    q = p.quantize_chat
    float_scores = json.loads(paths.EVAL_METRICS.read_text())["chat"]["finetuned"]
    model, tok = load_chat(paths.CHAT_MODEL, device="cpu")
    calibration = encode_frame(tok, pl.read_parquet(paths.CHAT_TRAIN).head(q.calibration_examples), 1024)
    modules = quantize_with_recipe(model, (torch.tensor([e["input_ids"]]) for e in calibration), q)
    tmp = paths.CHAT_INT8_MODEL.with_name(paths.CHAT_INT8_MODEL.name + ".tmp")
    card = {"alpha": q.alpha, "calibration_examples": len(calibration), "skip": list(q.skip)}
    save_quantized(model, tok, tmp, card | {"source": "artifacts/models/chat"})
    swap_dir(tmp, paths.CHAT_INT8_MODEL)
    del model
    gc.collect()
    log.info("quantized modules=%d method=%s alpha=%s", len(modules), METHOD, q.alpha)

    int8, tok = load_quantized(paths.CHAT_INT8_MODEL)
    tok.padding_side = "left"
    df = pl.read_parquet(paths.CHAT_EVAL)
    loss_df = df.head(p.evaluate.chat_loss_samples)
    scores = heldout_loss(int8, tok, loss_df, p.train_chat.max_length)
    scores |= answer_quality(int8, tok, df.head(p.evaluate.generation_samples), p.evaluate.max_new_tokens)[0]
    reference, _ = load_chat(paths.CHAT_MODEL, device="cpu")
    agreement = top_token_agreement(reference, int8, tok, loss_df, p.train_chat.max_length)
    speed = {
        "float": tokens_per_second(reference, tok, q.speed_tokens),
        "int8": tokens_per_second(int8, tok, q.speed_tokens),
    }
    passed, reason = gate(p, float_scores["eval_loss"], scores["eval_loss"])
    report: dict[str, object] = {
        "method": METHOD,
        **card,
        "modules": len(modules),
        "per_token": list(q.per_token),
        "float": {k: float_scores[k] for k in ("eval_loss", "perplexity", "answer_f1")},
        "int8": scores,
        "top_token_agreement": agreement,
        "tokens_per_s_one_stream": speed | {"threads": torch.get_num_threads()},
        "gate": {"passed": passed, "reason": reason, "max_loss_increase": p.gate.int8_max_loss_increase},
    }
    write_json(report, paths.QUANTIZE_CHAT_METRICS)
    log.info(
        "int8 chat loss=%s (float %s) f1=%s (float %s) agreement=%s tokens/s=%s gate=%s",
        scores["eval_loss"],
        float_scores["eval_loss"],
        scores["answer_f1"],
        float_scores["answer_f1"],
        agreement,
        speed,
        "passed" if passed else "refused",
    )
    return report


def main() -> None:
    report = run(params())
    g = report["gate"]
    assert isinstance(g, dict)
    print(f"quantize_chat: gate {'PASSED' if g['passed'] else 'refused'}: {g['reason']}")


if __name__ == "__main__":
    main()
