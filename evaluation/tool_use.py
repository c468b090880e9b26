"""Tool use on the held-out questions: does the chat model call a tool of its own accord, and answer from its result?

The chat fine-tuning data teaches the tool-call format (data/grounded.py, core/prompts.py `example_prompt`); these
scores say what it learnt, for the base and the fine-tuned model, with the prompts serving renders:

    call_probability   mean probability that the answer starts a call (its first token is the call tag's), with
                       `search_docs` and another tool offered and `tool_choice: auto`: the model's own inclination,
                       which moves long before greedy decoding flips
    tool_call_rate     share of those questions whose greedy answer is exactly one well-formed `search_docs` call
                       with a string `query` (free decoding, no grammar: under `auto` serving's grammar holds a call
                       that has begun, but whether to begin is the model's)
    tool_answer_f1     token F1 against the reference answer when the question is answered after a `search_docs`
                       call whose result is the example's numbered passages (an agent loop's second step)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.prompts import ExampleFormat, example_prompt, search_call
from core.tool_calls import OPEN, parse, template_for
from evaluation.chat_quality import generate, token_f1

CALL_TOKENS = 96
"""Room for one call: the question as the query plus ~25 tokens of format."""


def _prompts(tok: PreTrainedTokenizerBase, fmt: ExampleFormat, df: pl.DataFrame) -> list[str]:
    template = template_for(tok.chat_template)
    out = []
    for i, r in enumerate(df.iter_rows(named=True)):
        messages, tools = example_prompt(fmt, r["question"], r["contexts"], i)
        listed: Any = tools
        text = tok.apply_chat_template(
            messages, tools=listed, chat_template=template, add_generation_prompt=True, tokenize=False
        )
        out.append(str(text))
    return out


def _next_token(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    """Each prompt's next-token distribution, (B, vocab) (one batched forward, left-padded; the last position's
    logits only: every position's were 2.2 GB for 16 tool prompts)."""
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        return model(**enc, logits_to_keep=1).logits[:, -1].float().softmax(-1)


def is_search_call(answer: str) -> bool:
    """Exactly one well-formed `search_docs` call with a string `query`, and nothing else."""
    content, calls = parse(answer)
    if content or len(calls) != 1 or calls[0].name != search_call("")["name"]:
        return False
    return isinstance(json.loads(calls[0].arguments).get("query"), str)


def tool_use(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, df: pl.DataFrame, max_new_tokens: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The three scores of the module docstring over `df` (chat_eval rows), and the samples for a report."""
    calls = _prompts(tok, "tool_call", df)
    tag = tok(OPEN, add_special_tokens=False)["input_ids"][0]
    dist = _next_token(model, tok, calls)
    probability = dist[:, tag].tolist()
    first = dist.argmax(-1).tolist()
    # greedy begins a call only where the tag is the most likely first token: only those are generated
    begun = [i for i, t in enumerate(first) if t == tag]
    made = dict(zip(begun, generate(model, tok, [calls[i] for i in begun], CALL_TOKENS), strict=True))
    called = [is_search_call(made[i]) if i in made else False for i in range(df.height)]
    answers = generate(model, tok, _prompts(tok, "tool_answer", df), max_new_tokens)
    f1s = [token_f1(a, r) for a, r in zip(answers, df["answer"], strict=True)]
    scores = {
        "call_probability": round(sum(probability) / max(len(probability), 1), 4),
        "tool_call_rate": round(sum(called) / max(len(called), 1), 4),
        "tool_answer_f1": round(sum(f1s) / max(len(f1s), 1), 4),
    }
    samples = [
        {"question": q, "call_probability": round(p, 4), "call": made.get(i, ""), "called": c, "answer_after_result": a}
        for i, (q, p, c, a) in enumerate(zip(df["question"], probability, called, answers, strict=True))
    ]
    return scores, samples
