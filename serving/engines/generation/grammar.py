"""Constrained decoding: a grammar's token mask as one more per-row logits step.

Which library, and why: llguidance, not xgrammar. Both serve vLLM and SGLang; measured on this CPU with
SmolLM2's tokenizer (49,152 tokens; `benchmarks/grammar_libs.py --repeat 20`, 2 cores, one thread, idle machine,
2026-11-30; medians):

    grammar          compile ms (llguidance / xgrammar)   mask µs per token, p50 (llguidance / xgrammar)
    json_object      0.5 / 3.5                            86 / 69
    json_schema      0.8 / 4.8                            89 / 75
    tool arguments   0.5 / 4.3                            94 / 125

The mask costs about the same either way (within ~30 µs per token, neither always ahead), against ~60 ms
for one decode step here (0.15%). What decides it: llguidance is one 3 MB wheel with no Python dependencies,
while xgrammar requires `triton` on Linux x86_64 (a large wheel a CPU build of torch does not otherwise need);
llguidance compiles a request's grammar 5-9x faster (it happens per request, before prefill); it never raises
on a bad grammar or token but enters an error state we can check (so a step cannot kill the batch); and its
Lark front end embeds JSON schemas (`%json`), which the tool-call format builds on.

The pieces:
    `Constraint` (serving/engines/types.py)  what the request asked for: a JSON schema, any JSON object, or Lark
    `Grammars`     built once per engine from its tokenizer; `compile` checks a constraint (InvalidRequest naming
                   the problem) and `matcher` starts one request's state
    `GrammarMask`  the per-request step: `__call__` masks one row's logits, `accept` advances by the chosen token

What happens at the edges:
    - the grammar is complete: only EOS is allowed, so the answer ends with `finish_reason: "stop"`;
    - max_tokens comes first: the answer ends with "length" and holds what was valid so far (never padded);
    - the matcher enters an error state (a bug, never a user's input): only EOS is allowed, the row ends, the
      error is logged, and the rest of the batch decodes on.
JSON is generated compact (`", "` and `": "` separators, no free whitespace): a small model given free
whitespace can spend its whole budget on newlines. For the same reason objects that list `properties` are
closed unless the schema says otherwise (core/json_schemas.py, as xgrammar's default strict mode does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from core.errors import InvalidRequest
from core.json_schemas import JSON_STYLE, close_objects
from core.log import get_logger
from serving.engines.types import Constraint

log = get_logger(__name__)


class Grammars:
    """Compiles constraints for one tokenizer (building llguidance's tokenizer takes ~0.5 s: once per engine)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_ids: Iterable[int]) -> None:
        eos = sorted(eos_ids)
        self.eos_ids = eos
        self.vocab_size = len(tokenizer)
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=eos)  # type: ignore[arg-type]

    def compile(self, constraint: Constraint) -> str:
        """The llguidance grammar for `constraint`, checked against this tokenizer.

        Raises:
            InvalidRequest: the schema or grammar is malformed, or uses what the grammar library cannot express;
                the message is the library's, naming the problem, and `constraint.param` the request field.
        """
        param = constraint.param
        if constraint.kind == "lark":
            grammar = llguidance.LLMatcher.grammar_from_lark(constraint.source)
        else:
            source = constraint.source if constraint.kind == "json_schema" else '{"type": "object"}'
            try:
                schema = json.loads(source)
                if not isinstance(schema, dict):
                    raise ValueError(f"got {type(schema).__name__}")
                grammar = llguidance.LLMatcher.grammar_from_json_schema(close_objects(schema), defaults=JSON_STYLE)  # type: ignore[arg-type]
            except ValueError as e:
                raise InvalidRequest(f"the JSON schema is not a JSON object: {e}", param=param) from None
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            what = _what(constraint)
            raise InvalidRequest(f"the {what} cannot be used to constrain the output: {error}", param=param)
        return grammar

    def matcher(self, grammar: str) -> GrammarMask:
        """One request's state in a compiled grammar (`compile`), at its start."""
        m = llguidance.LLMatcher(self._tokenizer, grammar)
        if m.is_error():  # `compile` validated it: this is a bug, not the user's input
            raise InvalidRequest(f"the grammar could not be started: {m.get_error()}")
        return GrammarMask(m, self.eos_ids, self.vocab_size)


def _what(c: Constraint) -> str:
    if c.param == "tools":
        return "tools' parameter schemas"
    return {"json_schema": "JSON schema", "json_object": "JSON object format", "lark": "grammar"}[c.kind]


class GrammarMask:
    """A request's grammar state as a logits step: masks what the grammar forbids next; `accept` advances it.

    Called on the scheduler thread only (one request's rows are never decoded concurrently).
    """

    def __init__(self, matcher: llguidance.LLMatcher, eos_ids: list[int], vocab_size: int) -> None:
        self._m = matcher
        self._eos = torch.tensor(eos_ids, dtype=torch.long)
        self._eos_set = set(eos_ids)
        self._vocab = vocab_size
        self._words = (vocab_size + 31) // 32
        self._buf = np.zeros(self._words, dtype=np.int32)

    def allowed(self) -> torch.Tensor:
        """(vocab,) bool: the tokens the grammar allows next (only EOS once it is complete or in error)."""
        if self._m.is_error():
            return self._only_eos()
        self._buf[:] = 0
        self._m.unsafe_compute_mask_ptr(self._buf.ctypes.data, self._buf.nbytes)
        bits = np.unpackbits(self._buf.view(np.uint8), bitorder="little")[: self._vocab]
        allowed = torch.from_numpy(bits.astype(np.bool_))
        if not bool(allowed.any()):  # nothing allowed: end the row rather than draw from -inf
            log.error("grammar allows no token (error: %s); ending the answer", self._m.get_error() or "none")
            return self._only_eos()
        return allowed

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed()
        n = logits.shape[-1]
        if n > allowed.shape[0]:  # the model's vocabulary is padded past the tokenizer's
            allowed = torch.cat([allowed, torch.zeros(n - allowed.shape[0], dtype=torch.bool)])
        return logits.masked_fill(~allowed[:n].to(logits.device), float("-inf"))

    def accept(self, token: int) -> None:
        """Advance by the chosen token (an EOS ends the request: nothing to advance)."""
        if token in self._eos_set:
            return
        if not self._m.consume_token(token):
            log.error("grammar refused token %d: %s", token, self._m.get_error())

    @property
    def complete(self) -> bool:
        """The output so far is a whole match of the grammar."""
        return bool(self._m.is_accepting())

    def _only_eos(self) -> torch.Tensor:
        out = torch.zeros(self._vocab, dtype=torch.bool)
        out[self._eos] = True
        return out
