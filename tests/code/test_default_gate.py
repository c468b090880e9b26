"""The default profile (params.yaml) ships a strict promotion gate; only tiny profiles relax it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_params
from evaluation.gate import decide

ROOT = Path(__file__).resolve().parents[2]
GATE = load_params(ROOT / "params.yaml").gate


@pytest.mark.parametrize(
    ("metric", "higher_is_better", "min_gain"),
    [
        (GATE.embedder_metric, True, GATE.embedder_min_gain),  # recall@10
        (GATE.chat_metric, False, GATE.chat_min_gain),  # eval_loss
    ],
)
def test_a_candidate_must_beat_its_base(metric: str, higher_is_better: bool, min_gain: float) -> None:
    # decide() passes when gain > min_gain (strictly): min_gain >= 0 refuses any candidate that is no better.
    assert min_gain >= 0, f"params.yaml gate for {metric} is relaxed (min_gain {min_gain}): keep that to profiles/"
    sign = 1 if higher_is_better else -1
    base = 0.5

    def promoted(candidate: float, champion: float | None = None) -> bool:
        return decide(
            metric,
            candidate,
            base,
            champion,
            higher_is_better=higher_is_better,
            min_gain=min_gain,
            champion_tolerance=GATE.champion_tolerance,
        ).promote

    assert not promoted(base)  # equal to its base
    assert not promoted(base - sign * 0.01)  # worse than its base
    assert not promoted(base + sign * min_gain)  # exactly the margin is not more than it
    better = base + sign * (min_gain + 0.01)
    assert promoted(better)
    # and it may not be worse than the current champion by more than the tolerance
    assert not promoted(better, champion=better + sign * (GATE.champion_tolerance + 0.01))


def test_tolerance_toward_the_champion_is_small() -> None:
    assert 0 <= GATE.champion_tolerance <= 0.01
