"""Choosing each row's next token: a per-row chain of logits steps, then argmax or a draw.

A `LogitsStep` maps one row's (vocab,) float logits to new logits (-inf removes a token). A request's
`RowSampler` holds its chain (temperature, then top-p), its seeded `torch.Generator`, and whether it is
greedy. Later work (grammar masks, repetition penalties, logprob capture) adds a step here; the
scheduler only calls `sample`.

Greedy rows without steps (temperature 0, the common case for evaluation and tests) take one batched
argmax over the whole (B, vocab) block; only the others run their chain row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from serving.engines.types import SamplingParams

LogitsStep = Callable[[torch.Tensor], torch.Tensor]
"""One row's (vocab,) float logits -> (vocab,) float logits; -inf means never pick this token."""


@dataclass(frozen=True)
class Temperature:
    """Divide the logits by `value` (> 0): below 1 sharpens the distribution, above 1 flattens it."""

    value: float

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.value


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


@dataclass(frozen=True)
class RowSampler:
    """How one request picks its tokens: its logits steps in order, then argmax (greedy) or a draw."""

    steps: tuple[LogitsStep, ...] = ()
    greedy: bool = True
    generator: torch.Generator | None = None
    """Seeded per request, so a seeded request draws the same tokens every time (None: torch's global RNG)."""

    @classmethod
    def from_params(cls, params: SamplingParams, device: torch.device | str = "cpu") -> RowSampler:
        """The chain for a request: greedy where temperature is 0, else temperature then top-p.

        Args:
            params: the request's sampling parameters.
            device: where the logits live; a seeded generator must be on the same device.
        """
        if params.temperature <= 0:
            return cls()  # greedy: top_p and seed change nothing
        steps: list[LogitsStep] = [Temperature(params.temperature)]
        if params.top_p < 1.0:
            steps.append(TopP(params.top_p))
        gen = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)
        return cls(tuple(steps), greedy=False, generator=gen)

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: such rows share the batched argmax."""
        return self.greedy and not self.steps

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the chain to one row's (vocab,) logits (in fp32: bf16 softmax loses the tail)."""
        out = logits.float()
        for step in self.steps:
            out = step(out)
        return out

    def pick(self, logits: torch.Tensor) -> int:
        """One row's (vocab,) logits -> its next token id."""
        out = self.process(logits)
        if self.greedy:
            return int(out.argmax())
        return int(torch.multinomial(out.softmax(-1), 1, generator=self.generator)[0])


GREEDY = RowSampler()


def sample(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """(B, vocab) logits -> (B,) long token ids, row i chosen by `samplers[i]`."""
    tokens = logits.argmax(-1)  # the cheap batched path, right for every plain greedy row
    for i, s in enumerate(samplers):
        if not s.plain_greedy:
            tokens[i] = s.pick(logits[i])
    return tokens
