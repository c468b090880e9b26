"""The promotion gate: the only path to the `champion` alias.

A candidate is promoted when it beats its base model on the held-out set by more than the
configured margin, and is not worse than the current champion (scored on the same held-out set)
by more than the tolerance. When it is refused and there is no champion yet (a new corpus, a fresh
registry), the base model is promoted instead: it scored at least as well, and a server must never be
left with nothing to serve. Pure functions: the decision is unit-tested without a registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    higher_is_better: bool
    candidate: float
    base: float
    champion: float | None
    reasons: list[str] = field(default_factory=list)
    promote_base: bool = False
    """The candidate was refused and nothing is served yet: register and promote the base model instead."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(
    metric: str,
    candidate: float,
    base: float,
    champion: float | None,
    *,
    higher_is_better: bool,
    min_gain: float,
    champion_tolerance: float,
) -> Decision:
    """Apply the gate.

    Args:
        metric: the metric's name, for the report.
        candidate: the new model's score on the held-out set.
        base: the base model's score on the same set.
        champion: the current champion's score on the same set, or None when there is none.
        higher_is_better: True for recall, False for loss.
        min_gain: the candidate must beat the base by more than this.
        champion_tolerance: the candidate may be at most this much worse than the champion.
    """
    sign = 1.0 if higher_is_better else -1.0
    gain = sign * (candidate - base)
    reasons = []
    ok_base = gain > min_gain
    reasons.append(
        f"{metric}: candidate {candidate:.4f} vs base {base:.4f} "
        f"({'+' if gain >= 0 else ''}{gain:.4f} improvement; needs > {min_gain}) -> {'pass' if ok_base else 'FAIL'}"
    )
    ok_champion = True
    if champion is None:
        reasons.append("no current champion -> pass")
    else:
        delta = sign * (candidate - champion)
        ok_champion = delta >= -champion_tolerance
        reasons.append(
            f"{metric}: candidate {candidate:.4f} vs champion {champion:.4f} "
            f"({delta:+.4f}; tolerance {champion_tolerance}) -> {'pass' if ok_champion else 'FAIL'}"
        )
    promote = ok_base and ok_champion
    promote_base = not promote and champion is None
    if promote_base:
        reasons.append("no champion to keep serving -> the base model is promoted instead")
    return Decision(promote, metric, higher_is_better, candidate, base, champion, reasons, promote_base)
