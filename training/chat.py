"""Stage `train_chat`: LoRA fine-tuning of the chat base on the RAG instruction data, merged for serving.

Each example is the serving RAG prompt (core/prompts.py) over its numbered passages (data/grounded.py),
with the grounded, cited answer as the assistant turn; a fraction teach the tool-call format instead (a
`search_docs` call, or the answer after its result: core/prompts.py `example_prompt`). Only the answer
tokens are trained on (prompt labels are -100).
The LoRA adapter is merged into the base before saving: MLflow's transformers flavour would
otherwise store only the adapter plus a hub reference to the base, which we cannot reach offline.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_pt_utils import BatchRebalanceSampler

from core import paths
from core.citations import CITATION
from core.config import Params, params
from core.device import pick_device
from core.io import write_json
from core.log import get_logger
from core.prompts import ExampleFormat, example_prompt, search_call
from core.tool_calls import chat_template, render_call, template_for
from core.tracking import lineage_tags
from training.common import TrackerCallback, is_main_process, seed_everything, swap_dir, training_run, write_loss_plot

log = get_logger(__name__)

IGNORE = -100  # label value the loss skips


def level_lengths(lengths: Sequence[int], excess: int) -> list[int]:
    """New lengths, `excess` shorter in all, taken from the longest first: every length over a level L is
    cut to L, the lowest L that removes `excess` (ties of the cut: the last ones lose the extra token).

    >>> level_lengths([100, 40, 70], 50)
    [60, 40, 60]
    """
    if excess <= 0:
        return list(lengths)
    if excess >= sum(lengths):
        return [0] * len(lengths)
    lo, hi = 0, max(lengths)  # the highest level that removes at least `excess`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(n - mid, 0) for n in lengths) >= excess:
            lo = mid
        else:
            hi = mid - 1
    out = [min(n, lo) for n in lengths]
    spare = sum(lengths) - excess - sum(out)  # give back what the level over-cut, to the first ones at it
    for i, n in enumerate(lengths):
        if spare > 0 and n > lo:
            out[i] += 1
            spare -= 1
    return out


def _evidence_span(passage: str, answer: str) -> tuple[int, int] | None:
    """Where the answer's text (without its citations) stands in `passage`, whatever the whitespace."""
    words = CITATION.sub("", answer).split()
    if not words:
        return None
    found = re.search(r"\s+".join(re.escape(w) for w in words), passage)
    return found.span() if found else None


def cut_passage(tok: PreTrainedTokenizerBase, passage: str, n_tokens: int, answer: str) -> str:
    """`passage` cut to about `n_tokens` tokens: its end goes, unless it holds the answer's text, which the
    window keeps (centred on it), so a grounded example never loses its grounds."""
    enc = tok(passage, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) <= n_tokens:
        return passage
    span = _evidence_span(passage, answer)
    first = 0
    if span is not None:  # a window centred on the grounds
        inside = [i for i, (a, b) in enumerate(offsets) if b > span[0] and a < span[1]]
        if inside:
            need = inside[-1] - inside[0] + 1
            n_tokens = max(n_tokens, need)  # the grounds stay whole even over the target
            first = max(0, min(inside[0] - (n_tokens - need) // 2, len(ids) - n_tokens))
    last = min(first + n_tokens, len(ids))
    if last <= first:
        return ""
    return passage[offsets[first][0] : offsets[last - 1][1]]


def encode_example(
    tok: PreTrainedTokenizerBase,
    question: str,
    passages: Sequence[str],
    answer: str,
    max_length: int,
    fmt: ExampleFormat = "rag",
    other_tool: int = 0,
) -> dict[str, list[int]]:
    """Token ids and labels for one example; passages are cut (never the answer) to fit `max_length`.

    The longest passages are cut first, down to a common length (`level_lengths`), from their end, except
    around the answer's own text (`cut_passage`); the answer is cut only when the prompt alone is too long.
    A `tool_call` example's answer is the `search_docs` call (core/prompts.py `example_prompt` for the prompts),
    kept whole even past `max_length` (its prompt, the tool list, is ~280 tokens and has nothing to cut).
    """
    if fmt == "tool_call":
        call = search_call(question)
        answer = render_call(call["name"], call["arguments"])
    answer_ids = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]

    def prompt_ids(ps: Sequence[str]) -> list[int]:
        messages, offered = example_prompt(fmt, question, ps, other_tool)
        tools: Any = offered
        template = template_for(tok.chat_template) if tools else None
        # transformers 5 returns a BatchEncoding here (4.x returned a list of ids)
        enc = tok.apply_chat_template(
            messages, tools=tools, chat_template=template, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(enc["input_ids"])  # type: ignore[index,arg-type,call-overload]

    cut = list(passages)
    ids = prompt_ids(cut)
    # re-tokenising a cut text can shift a few tokens, and the grounds are kept whole: a few rounds settle it
    for _ in range(4):
        overflow = len(ids) + len(answer_ids) - max_length
        if overflow <= 0:
            break
        lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in cut]
        targets = level_lengths(lengths, overflow + 4)
        cut = [cut_passage(tok, p, n, answer) for p, n in zip(cut, targets, strict=True)]
        ids = prompt_ids(cut)
    if fmt == "tool_call":  # no passages to shorten, and a cut call teaches a broken format: kept whole
        max_length = max(max_length, len(ids) + len(answer_ids))
    answer_ids = answer_ids[: max(max_length - len(ids), 1)]
    return {"input_ids": ids + answer_ids, "labels": [IGNORE] * len(ids) + answer_ids}


def encode_frame(tok: PreTrainedTokenizerBase, df: pl.DataFrame, max_length: int) -> list[dict[str, list[int]]]:
    """`encode_example` for every row of a chat dataset (columns `question, contexts, answer`, and `format` where
    the examples are not all RAG ones; the tool offered beside `search_docs` varies with the row)."""
    return [
        encode_example(tok, r["question"], r["contexts"], r["answer"], max_length, r.get("format") or "rag", i)
        for i, r in enumerate(df.iter_rows(named=True))
    ]


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


def loss_window(labels: torch.Tensor) -> int:
    """How many final positions of right-padded `labels` (B, T) a next-token loss reads: from the one before the
    batch's earliest answer token to the end.

    Only answers are trained on (8% of a default batch's tokens), and the 49k-way LM head and its softmax over the
    prompt positions were a quarter of a step: asking the model for these positions' logits only (`logits_to_keep`,
    as generation does) took a default step (batch 8, 2 threads) from 12.4-13.1 s to 9.2 s with the same loss and
    gradients (to 5 decimals; /tmp probe in the closing note of issue 16, stop 30).
    """
    answer = labels != IGNORE
    starts = answer.int().argmax(dim=1)[answer.any(dim=1)]
    width = labels.shape[1]
    return width if starts.numel() == 0 else min(width - int(starts.min()) + 1, width)


def collate_for_loss(tok: PreTrainedTokenizerBase, batch: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate`, asking the model for logits only where the loss reads them (`loss_window`): `logits_to_keep`, and
    the labels cut to the same final positions, so the model's own shifted loss is unchanged."""
    out: dict[str, Any] = collate(tok, batch)
    keep = loss_window(out["labels"])
    out["labels"] = out["labels"][:, -keep:]
    out["logits_to_keep"] = keep
    return out


class ChatTrainer(Trainer):
    """The Trainer, with `batch_rebalance`'s draw seeded by `data_seed` (transformers builds its sampler with seed 42
    whatever the arguments say, so `dvc exp run -S seed=N` would not change which examples each step sees)."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler) and self.args.data_seed is not None:
            sampler.seed = self.args.data_seed
        return sampler


def training_args(p: Params, device: str) -> TrainingArguments:
    """The Trainer's arguments for `train_chat` on `device`.

    Each optimizer step's `batch_size * grad_accum` examples (a random draw, as before) are split into `grad_accum`
    micro-batches by length (transformers' `batch_rebalance` sampler), so one long example pads only the micro-batch
    it is in. `tool_call` examples are kept whole at ~280 tokens (their prompt is the tool list; `encode_example`)
    while the others are cut to `max_length`: at the default 7% of them, 45% of random batches of 8 held one, and
    such a step took 14 s against 7 (the padding, and the logits `loss_window` keeps from the earliest answer to the
    end of every row). The step's gradient is the same sum over the same examples whatever the split.
    """
    cfg = p.train_chat
    return TrainingArguments(
        output_dir=str(paths.STATE / "checkpoints" / "chat"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        train_sampling_strategy="batch_rebalance",
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


def train_chat(p: Params, base_dir: Path, train_file: Path, out_dir: Path) -> dict[str, Any]:
    """LoRA-fine-tune the causal LM in `base_dir` on `train_file`, merge, and save it to `out_dir`.

    Returns:
        Training summary (final loss, steps, seconds, processes, MLflow run id). Under `torchrun` / `accelerate
        launch` only the main process saves the model and has a run id (training/common.py `training_run`).
    """
    cfg = p.train_chat
    seed_everything(p.seed)
    device = pick_device()
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    # The model is taught the project's tool format (core/chat_template.jinja); saved with the model, the
    # template travels with every registered version, and serving renders with the model's own template.
    # Conversations without tools render exactly as with SmolLM2's own template.
    tok.chat_template = chat_template()
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
    args = training_args(p, device)
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
    with training_run("train_chat", config, tags) as tracker:
        trainer = ChatTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            data_collator=lambda b: collate_for_loss(tok, b),
            callbacks=[TrackerCallback(tracker)],
        )
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {
            "train_loss": float(result.training_loss),
            "steps": int(result.global_step),
            "train_seconds": round(seconds, 1),
            "train_examples": len(examples),
            "processes": args.world_size,
        }
        if tracker is None:  # not the main process: the main one saves and records
            return summary
        merged = model.merge_and_unload()  # type: ignore[operator]
        merged.save_pretrained(tmp)  # type: ignore[operator]
        tok.save_pretrained(tmp)
        swap_dir(tmp, out_dir)
        summary["run_id"] = tracker.run_id
        tracker.log_metrics({"final_train_loss": summary["train_loss"], "train_seconds": seconds})
        write_loss_plot(tracker.history, paths.CHAT_LOSS_PLOT)
    log.info("chat trained steps=%s loss=%.4f seconds=%.1f", summary["steps"], summary["train_loss"], seconds)
    return summary


def main() -> None:
    summary = train_chat(params(), paths.BASE_CHAT, paths.CHAT_TRAIN, paths.CHAT_MODEL)
    if is_main_process():
        write_json(summary, paths.TRAIN_CHAT_METRICS)


if __name__ == "__main__":
    main()
