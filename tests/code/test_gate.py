"""The promotion gate: beats the base, and is not worse than the current champion."""

from __future__ import annotations

from evaluation.gate import decide


def test_better_than_base_without_champion_is_promoted() -> None:
    d = decide("recall@10", 0.8, 0.7, None, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert d.promote
    assert any("no current champion" in r for r in d.reasons)


def test_not_better_than_base_is_rejected() -> None:
    d = decide("recall@10", 0.7, 0.7, None, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert not d.promote
    assert "FAIL" in d.reasons[0]


def test_a_refused_candidate_with_no_champion_leaves_the_base_to_serve() -> None:
    first = decide("recall@10", 0.6, 0.7, None, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert not first.promote and first.promote_base
    assert first.reasons[-1] == "no champion to keep serving -> the base model is promoted instead"
    later = decide("recall@10", 0.6, 0.7, 0.7, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert not later.promote and not later.promote_base  # the champion keeps serving
    won = decide("recall@10", 0.8, 0.7, None, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert won.promote and not won.promote_base


def test_min_gain_is_required() -> None:
    d = decide("recall@10", 0.72, 0.7, None, higher_is_better=True, min_gain=0.05, champion_tolerance=0.0)
    assert not d.promote


def test_worse_than_champion_is_rejected() -> None:
    d = decide("recall@10", 0.8, 0.7, 0.85, higher_is_better=True, min_gain=0.0, champion_tolerance=0.0)
    assert not d.promote
    assert "vs champion 0.8500" in d.reasons[1]


def test_tolerance_vs_champion() -> None:
    d = decide("recall@10", 0.84, 0.7, 0.85, higher_is_better=True, min_gain=0.0, champion_tolerance=0.02)
    assert d.promote


def test_lower_is_better_for_loss() -> None:
    assert decide("eval_loss", 1.2, 1.5, None, higher_is_better=False, min_gain=0.0, champion_tolerance=0.0).promote
    assert not decide("eval_loss", 1.6, 1.5, None, higher_is_better=False, min_gain=0.0, champion_tolerance=0.0).promote
    assert not decide("eval_loss", 1.2, 1.5, 1.1, higher_is_better=False, min_gain=0.0, champion_tolerance=0.0).promote
