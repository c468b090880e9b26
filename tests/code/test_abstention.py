"""The abstention threshold separates answerable from unanswerable best scores."""

from __future__ import annotations

import pytest

from evaluation.abstention import best_scores, choose_threshold


def test_best_scores_with_and_without_the_question_s_own_document() -> None:
    scored = [[("d1", 0.9), ("d2", 0.4)], [("d3", 0.7)], []]
    assert best_scores(scored, ["d1", "d3", "d9"]) == ([0.9, 0.7], [0.4])  # q2 retrieved only its own document


def test_threshold_maximises_balanced_accuracy_and_prefers_answering() -> None:
    out = choose_threshold([0.8, 0.9, 0.6], [0.2, 0.3, 0.7])
    assert 0.3 < out["threshold"] <= 0.6  # answers all three answerable, abstains on two of three others
    assert out["answered_when_answerable"] == 1.0 and out["abstained_when_unanswerable"] == 0.6667
    separable = choose_threshold([0.8, 0.9], [0.1, 0.2])
    assert separable["balanced_accuracy"] == 1.0 and 0.2 < separable["threshold"] < 0.8
    with pytest.raises(ValueError, match="need answerable and unanswerable"):
        choose_threshold([0.5], [])


def test_a_floor_on_answered_questions_takes_the_highest_threshold_that_keeps_it() -> None:
    answerable, unanswerable = [0.9, 0.8, 0.7, 0.6, 0.5], [0.55, 0.65, 0.2]
    out = choose_threshold(answerable, unanswerable, min_answered=0.8)
    assert out["answered_when_answerable"] == 0.8 and 0.55 < out["threshold"] <= 0.6
    assert out["abstained_when_unanswerable"] == 0.6667
    assert choose_threshold(answerable, unanswerable, min_answered=1.0)["threshold"] <= 0.5
