"""Which constrained-decoding library serves our grammars: llguidance or xgrammar, measured on this CPU.

Both serve vLLM and SGLang. For each library and each grammar (any JSON object; a JSON schema with nested
objects, arrays and enums; a tool call's arguments), with the chat model's own tokenizer:

    compile_ms   building the grammar for one request (what a new `response_format` costs before prefill)
    mask_us      per token: computing the allowed-token mask and applying it to one row's (vocab,) logits
    accept_us    per token: advancing the matcher by the chosen token

The decode loop forces a fixed valid document token by token (the grammar must allow each token, which is
checked), so both libraries do the same work. The result is one JSON line per library and grammar, and the
table at the end. Run (both libraries must be importable; neither is needed by the project except the chosen
one):

    .venv/bin/python benchmarks/grammar_libs.py [--tokenizer artifacts/base/chat] [--repeat 20]

Measured here (2026-11-30, 2 cores, SmolLM2-135M's tokenizer, 49,152 tokens, `--repeat 20` on an idle machine):
see serving/engines/generation/grammar.py for the figures and the choice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["library", "tool", "service"]},
        "owner": {"type": "object", "properties": {"login": {"type": "string"}}, "required": ["login"]},
    },
    "required": ["name", "year", "tags", "kind", "owner"],
    "additionalProperties": False,
}
DOC = {"name": "polars", "year": 2020, "tags": ["dataframe", "rust"], "kind": "library", "owner": {"login": "pola"}}
TOOL = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOL_DOC = {"city": "Paris", "unit": "celsius"}

CASES: list[tuple[str, dict[str, Any] | None, Any]] = [
    ("json_object", None, {"answer": "yes", "score": 3, "items": [1, 2, 3]}),
    ("json_schema", SCHEMA, DOC),
    ("tool_arguments", TOOL, TOOL_DOC),
]


def _unpack(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """A (words,) int32 bitmask (bit i of word w allows token 32w+i) -> (vocab,) bool."""
    bits = np.unpackbits(mask.numpy().view(np.uint8), bitorder="little")[:vocab]
    return torch.from_numpy(bits.astype(bool))


def run_llguidance(tok: PreTrainedTokenizerBase, vocab: int, schema: dict[str, Any] | None, ids: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    tokenizer_ms = (time.perf_counter() - t0) * 1000
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema or {"type": "object"})

    def compile_() -> Any:
        m = llguidance.LLMatcher(lltok, grammar)
        assert not m.is_error(), m.get_error()
        return m

    def mask(m: Any, buf: torch.Tensor) -> torch.Tensor:
        llguidance.torch.fill_next_token_bitmask(m, buf, 0)
        return _unpack(buf[0], vocab)

    return _measure(compile_, mask, lambda m, t: m.consume_token(t), llguidance.torch.allocate_token_bitmask(1, vocab),
                    ids, vocab) | {"tokenizer_ms": tokenizer_ms}  # fmt: skip


def run_xgrammar(tok: PreTrainedTokenizerBase, vocab: int, schema: dict[str, Any] | None, ids: list[int]) -> dict:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    tokenizer_ms = (time.perf_counter() - t0) * 1000

    def compile_() -> Any:
        g = compiler.compile_json_schema(json.dumps(schema)) if schema else compiler.compile_builtin_json_grammar()
        return xgr.GrammarMatcher(g)

    def mask(m: Any, buf: torch.Tensor) -> torch.Tensor:
        m.fill_next_token_bitmask(buf)
        return _unpack(buf[0], vocab)

    return _measure(compile_, mask, lambda m, t: m.accept_token(t), xgr.allocate_token_bitmask(1, vocab), ids,
                    vocab) | {"tokenizer_ms": tokenizer_ms}  # fmt: skip


def _measure(
    compile_: Callable[[], Any],
    mask: Callable[[Any, torch.Tensor], torch.Tensor],
    accept: Callable[[Any, int], bool],
    buf: torch.Tensor,
    ids: list[int],
    vocab: int,
) -> dict[str, float]:
    compile_ms, mask_us, accept_us = [], [], []
    logits = torch.randn(vocab)
    for _ in range(ARGS.repeat):
        t0 = time.perf_counter()
        m = compile_()
        compile_ms.append((time.perf_counter() - t0) * 1000)
        for t in ids:
            t0 = time.perf_counter()
            allowed = mask(m, buf)
            out = logits.masked_fill(~allowed, float("-inf"))
            t1 = time.perf_counter()
            assert bool(allowed[t]) and out[t] > float("-inf"), f"the grammar refused token {t}"
            t2 = time.perf_counter()
            ok = accept(m, t)
            t3 = time.perf_counter()
            assert ok is not False, f"the matcher refused token {t}"
            mask_us.append((t1 - t0) * 1e6)
            accept_us.append((t3 - t2) * 1e6)
    return {
        "compile_ms": statistics.median(compile_ms),
        "mask_us": statistics.median(mask_us),
        "mask_us_p90": float(np.percentile(mask_us, 90)),
        "accept_us": statistics.median(accept_us),
        "tokens": len(ids),
    }


def main() -> None:
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(ARGS.tokenizer)
    vocab = len(tok)
    rows = []
    for case, schema, doc in CASES:
        ids = tok(json.dumps(doc), add_special_tokens=False)["input_ids"]
        for lib, fn in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar)):
            r = {"library": lib, "grammar": case} | fn(tok, vocab, schema, ids)
            print(json.dumps(r))
            rows.append(r)
    print("\n| library | grammar | compile ms | mask µs/token (p50 / p90) | accept µs/token | tokenizer setup ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mask = f"{r['mask_us']:.0f} / {r['mask_us_p90']:.0f}"
        print(f"| {r['library']} | {r['grammar']} | {r['compile_ms']:.1f} | {mask} | {r['accept_us']:.0f} "
              f"| {r['tokenizer_ms']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="artifacts/base/chat")
    parser.add_argument("--repeat", type=int, default=20)
    ARGS = parser.parse_args()
    main()
