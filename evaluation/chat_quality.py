"""Chat model quality on the held-out RAG examples: loss / perplexity and an answer-quality score.

The examples (data/grounded.py) are a question over numbered passages with a grounded, cited reference
answer (or `NOT_IN_CONTEXT` when no passage answers). Loss is the mean cross-entropy of the reference
answer tokens given the prompt (the quantity the fine-tuning minimises). Answer quality is SQuAD-style
token F1 between the greedy answer and the reference answer. evaluation/tool_use.py asks the same questions
with tools offered.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import polars as pl
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.prompts import rag_messages
from training.chat import IGNORE, collate, encode_frame, loss_window


def heldout_loss(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, df: pl.DataFrame, max_length: int, batch_size: int = 8
) -> dict[str, float]:
    """Token-weighted mean answer loss and perplexity over `df` (columns `question, contexts, answer`)."""
    examples = encode_frame(tok, df, max_length)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in tqdm(range(0, len(examples), batch_size), desc="held-out loss"):
            batch = collate(tok, examples[i : i + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            keep, width = loss_window(batch["labels"]), batch["labels"].shape[1]
            # logits for the last `keep` positions only (the prompt's are never scored): (B, keep, V)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logits = model(**inputs, logits_to_keep=keep).logits
            # predict token t+1 from position t: (B, keep-1, V) against (B, keep-1)
            shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, width - keep + 1 :]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != IGNORE).sum())
    mean = total / max(count, 1)
    return {"eval_loss": round(mean, 4), "perplexity": round(math.exp(mean), 3)}


def top_token_agreement(
    reference: PreTrainedModel,
    candidate: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    df: pl.DataFrame,
    max_length: int,
    batch_size: int = 8,
) -> float:
    """Share of answer positions, teacher-forced on the reference answers of `df`, where `candidate` predicts the
    same next token as `reference` (a quantised model against its float source)."""
    examples = encode_frame(tok, df, max_length)
    same, count = 0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = collate(tok, examples[i : i + batch_size])
            keep, width = loss_window(batch["labels"]), batch["labels"].shape[1]
            inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            inputs["logits_to_keep"] = keep
            answer = batch["labels"][:, width - keep + 1 :] != IGNORE  # (B, keep-1): positions predicting answers
            ref = reference(**inputs).logits[:, :-1].argmax(-1)  # (B, keep-1)
            cand = candidate(**inputs).logits[:, :-1].argmax(-1)
            same += int(((ref == cand) & answer).sum())
            count += int(answer.sum())
    return round(same / max(count, 1), 4)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1."""
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generate_answers(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    questions: Sequence[str],
    contexts: Sequence[Sequence[str]],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to `questions`, each over its own numbered passages (`contexts[i]`, a list), in the
    prompt serving sends (core/prompts.py `rag_messages`); batched with left padding."""
    prompts = [
        str(tok.apply_chat_template(rag_messages(q, c), add_generation_prompt=True, tokenize=False))
        for q, c in zip(questions, contexts, strict=True)
    ]
    return generate(model, tok, prompts, max_new_tokens, batch_size)


def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of rendered prompts, stripped, in the order given; batched with left padding, shortest
    prompts together (prefill is most of the time, and 16 held-out RAG prompts batched in order were 28% padding,
    sorted 20%)."""
    if not prompts:
        return []
    tok.padding_side = "left"
    lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    answers: dict[int, str] = {}
    with torch.inference_mode():
        for i in tqdm(range(0, len(order), batch_size), desc="generate"):
            batch = order[i : i + batch_size]
            enc = tok([prompts[j] for j in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)  # type: ignore[operator]
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.update(zip(batch, texts, strict=True))
    return [answers[j].strip() for j in range(len(prompts))]


def answer_quality(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, df: pl.DataFrame, max_new_tokens: int
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Mean token F1 of generated answers against the references, and the samples for a report."""
    answers = generate_answers(model, tok, df["question"].to_list(), df["contexts"].to_list(), max_new_tokens)
    f1s = [token_f1(a, r) for a, r in zip(answers, df["answer"], strict=True)]
    samples = [
        {"question": q, "reference": r, "answer": a, "f1": round(f, 3)}
        for q, r, a, f in zip(df["question"], df["answer"], answers, f1s, strict=True)
    ]
    return {"answer_f1": round(sum(f1s) / max(len(f1s), 1), 4)}, samples
