"""Choosing each row's next token: a per-row chain of logits steps, then argmax or a draw.

A `LogitsStep` maps one row's (vocab,) float logits to new logits (-inf removes a token). A request's
`RowSampler` holds its chain (a grammar's mask, presence/frequency penalties, temperature, top-k, top-p), its
seeded `torch.Generator`, and whether it is greedy. Two steps keep state and are told each chosen token
(`accept`): the grammar's mask (generation/grammar.py) and the penalties (counts of what was generated).
When the request asked for logprobs, `pick` also records the chosen token's log-probability and the
`top_logprobs` best (`Logprobs`), taken from the model's own distribution before any step (as vLLM's
default `raw_logprobs`): what the model thought, whatever the grammar or temperature then did.

The scheduler only calls `sample`, so constrained and free rows share every decode step, and a row's
tokens depend on its own logits alone: the same batched as alone.

Greedy rows without steps (temperature 0, the common case for evaluation and tests) take one batched
argmax over the whole (B, vocab) block; only the others run their chain row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from serving.engines.types import SamplingParams

if TYPE_CHECKING:
    from serving.engines.generation.grammar import GrammarMask

LogitsStep = Callable[[torch.Tensor], torch.Tensor]
"""One row's (vocab,) float logits -> (vocab,) float logits; -inf means never pick this token."""


@dataclass(frozen=True)
class Temperature:
    """Divide the logits by `value` (> 0): below 1 sharpens the distribution, above 1 flattens it."""

    value: float

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.value


@dataclass(frozen=True)
class TopK:
    """Keep the `k` most likely tokens (ties at the k-th logit are kept too)."""

    k: int

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.k >= logits.shape[-1]:
            return logits
        kth = logits.topk(self.k).values[-1]
        return logits.masked_fill(logits < kth, float("-inf"))


@dataclass(frozen=True)
class TopP:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches `p`."""

    p: float

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= self.p  # the mass before this token already reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


class Penalties:
    """OpenAI's presence and frequency penalties over the tokens generated so far (not the prompt):
    `logit[t] -= presence * (count[t] > 0) + frequency * count[t]`."""

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence, self.frequency = presence, frequency
        self.counts: dict[int, int] = {}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.counts:
            return logits
        ids = torch.tensor(list(self.counts), dtype=torch.long, device=logits.device)
        counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype, device=logits.device)
        out = logits.clone()
        out[ids] -= self.presence + self.frequency * counts
        return out

    def accept(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1


@dataclass(frozen=True)
class TokenChoice:
    """One generated token's log-probability and the `top` best alternatives (id, logprob), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class Logprobs:
    """Records, per picked token, its log-probability under the raw model distribution and the `top` best."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.pending: list[TokenChoice] = []

    def record(self, raw: torch.Tensor, token: int) -> None:
        logp = raw.float().log_softmax(-1)
        best = logp.topk(self.top) if self.top else None
        top = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        self.pending.append(TokenChoice(token, float(logp[token]), top))

    def take(self) -> tuple[TokenChoice, ...]:
        out, self.pending = tuple(self.pending), []
        return out


@dataclass(frozen=True)
class RowSampler:
    """How one request picks its tokens: its logits steps in order, then argmax (greedy) or a draw."""

    steps: tuple[LogitsStep, ...] = ()
    greedy: bool = True
    generator: torch.Generator | None = None
    """Seeded per request, so a seeded request draws the same tokens every time (None: torch's global RNG)."""
    grammar: GrammarMask | None = None
    """The request's constraint: first in the chain, and told each chosen token."""
    penalties: Penalties | None = None
    """Presence/frequency penalties: in the chain after the grammar, and told each chosen token."""
    logprobs: Logprobs | None = None
    """Set when the request asked for logprobs: `pick` records each token's."""

    @classmethod
    def from_params(
        cls, params: SamplingParams, device: torch.device | str = "cpu", grammar: GrammarMask | None = None
    ) -> RowSampler:
        """The chain for a request: the grammar's mask (if any), the penalties (if any), then greedy where
        temperature is 0, else temperature, top-k, top-p (vLLM's order).

        Args:
            params: the request's sampling parameters.
            device: where the logits live; a seeded generator must be on the same device.
            grammar: the request's compiled constraint, at its start.
        """
        steps: list[LogitsStep] = [] if grammar is None else [grammar]
        penalties = None
        if params.presence_penalty or params.frequency_penalty:
            penalties = Penalties(params.presence_penalty, params.frequency_penalty)
            steps.append(penalties)
        logprobs = None if params.logprobs is None else Logprobs(params.logprobs)
        if params.temperature <= 0:  # greedy: top_p and seed change nothing
            return cls(tuple(steps), grammar=grammar, penalties=penalties, logprobs=logprobs)
        steps.append(Temperature(params.temperature))
        if params.top_k:
            steps.append(TopK(params.top_k))
        if params.top_p < 1.0:
            steps.append(TopP(params.top_p))
        gen = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)
        return cls(tuple(steps), False, gen, grammar=grammar, penalties=penalties, logprobs=logprobs)

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits, nothing recorded: such rows share the batched argmax."""
        return self.greedy and not self.steps and self.logprobs is None

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the chain to one row's (vocab,) logits (in fp32: bf16 softmax loses the tail)."""
        out = logits.float()
        for step in self.steps:
            out = step(out)
        return out

    def pick(self, logits: torch.Tensor) -> int:
        """One row's (vocab,) logits -> its next token id (the grammar, if any, is told it)."""
        out = self.process(logits)
        if self.greedy:
            token = int(out.argmax())
        else:
            token = int(torch.multinomial(out.softmax(-1), 1, generator=self.generator)[0])
        if self.grammar is not None:
            self.grammar.accept(token)
        if self.penalties is not None:
            self.penalties.accept(token)
        if self.logprobs is not None:
            self.logprobs.record(logits, token)
        return token


GREEDY = RowSampler()


def sample(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """(B, vocab) logits -> (B,) long token ids, row i chosen by `samplers[i]`."""
    tokens = logits.argmax(-1)  # the cheap batched path, right for every plain greedy row
    for i, s in enumerate(samplers):
        if not s.plain_greedy:
            tokens[i] = s.pick(logits[i])
    return tokens
