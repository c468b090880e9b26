"""Stage `train_chat`: LoRA fine-tuning of the chat base on the RAG instruction data, merged for serving.

Each example is the serving RAG prompt (core/prompts.py) over one passage, with the reference
answer as the assistant turn. Only the answer tokens are trained on (prompt labels are -100).
The LoRA adapter is merged into the base before saving: MLflow's transformers flavour would
otherwise store only the adapter plus a hub reference to the base, which we cannot reach offline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Trainer, TrainingArguments

from core import paths
from core.config import Params, params
from core.device import pick_device
from core.io import write_json
from core.log import get_logger
from core.prompts import rag_messages
from core.tracking import lineage_tags, tracked_run
from training.common import TrackerCallback, seed_everything, swap_dir, write_loss_plot

log = get_logger(__name__)

IGNORE = -100  # label value the loss skips


def encode_example(
    tok: PreTrainedTokenizerBase, question: str, context: str, answer: str, max_length: int
) -> dict[str, list[int]]:
    """Token ids and labels for one example; the context is cut (never the answer) to fit `max_length`."""
    answer_ids = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]

    def prompt_ids(ctx: str) -> list[int]:
        # transformers 5 returns a BatchEncoding here (4.x returned a list of ids)
        enc = tok.apply_chat_template(
            rag_messages(question, [ctx]), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(enc["input_ids"])  # type: ignore[index,arg-type,call-overload]

    ids = prompt_ids(context)
    overflow = len(ids) + len(answer_ids) - max_length
    if overflow > 0:
        ctx_ids: list[int] = tok(context, add_special_tokens=False)["input_ids"]
        keep = max(len(ctx_ids) - overflow - 4, 0)  # -4: re-tokenising a cut text can shift a few tokens
        ids = prompt_ids(str(tok.decode(ctx_ids[:keep])))
    answer_ids = answer_ids[: max(max_length - len(ids), 1)]
    return {"input_ids": ids + answer_ids, "labels": [IGNORE] * len(ids) + answer_ids}


def encode_frame(tok: PreTrainedTokenizerBase, df: pl.DataFrame, max_length: int) -> list[dict[str, list[int]]]:
    return [encode_example(tok, r["question"], r["context"], r["answer"], max_length) for r in df.iter_rows(named=True)]


def collate(tok: PreTrainedTokenizerBase, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad a batch of encoded examples. Shapes: (B, T)."""
    width = max(len(b["input_ids"]) for b in batch)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_chat(p: Params, base_dir: Path, train_file: Path, out_dir: Path) -> dict[str, Any]:
    """LoRA-fine-tune the causal LM in `base_dir` on `train_file`, merge, and save it to `out_dir`.

    Returns:
        Training summary (final loss, steps, seconds, MLflow run id).
    """
    cfg = p.train_chat
    seed_everything(p.seed)
    device = pick_device()
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    # fp32 for training on every device here: LoRA on a 135M model is small enough, and this CPU
    # has no fast bf16 path.
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).to(device)  # type: ignore[arg-type]
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    df = pl.read_parquet(train_file)
    if df.height == 0:
        raise ValueError(f"{train_file} has no chat training examples")
    examples = encode_frame(tok, df, cfg.max_length)
    args = TrainingArguments(
        output_dir=str(paths.STATE / "checkpoints" / "chat"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=p.seed,
        data_seed=p.seed,
        remove_unused_columns=False,
        use_cpu=device == "cpu",
    )
    trainable, total = model.get_nb_trainable_parameters()
    config = {
        "seed": p.seed,
        "base": p.models.chat_base,
        "train_examples": len(examples),
        "trainable_params": trainable,
        "total_params": total,
        **cfg.model_dump(),
    }
    tags = lineage_tags({"chat_train": train_file}) | {"stage": "train_chat"}
    tmp = out_dir.with_name(out_dir.name + ".partial")
    with tracked_run("train_chat", config, tags) as tracker:
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            data_collator=lambda b: collate(tok, b),
            callbacks=[TrackerCallback(tracker)],
        )
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        merged = model.merge_and_unload()  # type: ignore[operator]
        merged.save_pretrained(tmp)  # type: ignore[operator]
        tok.save_pretrained(tmp)
        swap_dir(tmp, out_dir)
        summary: dict[str, Any] = {
            "train_loss": float(result.training_loss),
            "steps": int(result.global_step),
            "train_seconds": round(seconds, 1),
            "train_examples": len(examples),
            "run_id": tracker.run_id,
        }
        tracker.log_metrics({"final_train_loss": summary["train_loss"], "train_seconds": seconds})
        write_loss_plot(tracker.history, paths.CHAT_LOSS_PLOT)
    log.info("chat trained steps=%s loss=%.4f seconds=%.1f", summary["steps"], summary["train_loss"], seconds)
    return summary


def main() -> None:
    summary = train_chat(params(), paths.BASE_CHAT, paths.CHAT_TRAIN, paths.CHAT_MODEL)
    write_json(summary, paths.TRAIN_CHAT_METRICS)


if __name__ == "__main__":
    main()
