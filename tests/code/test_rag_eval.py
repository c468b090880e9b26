"""evaluation.rag_eval: judging RAG answers (citations as serving cleans them) and the stage's metrics."""

from __future__ import annotations

import pytest

from core.prompts import NOT_IN_CONTEXT
from evaluation.rag_eval import Judged, judge, rag_metrics


def test_judge_keeps_valid_citations_and_maps_them_to_documents() -> None:
    j = judge("Use dumps [2] and loads [1, 7].", ["docA", "docB"], False, "Use dumps and loads.")
    assert j.answer == "Use dumps [2] and loads [1]."  # [7] was never given: removed as serving removes it
    assert j.cited_docs == ["docB", "docA"]
    assert j.f1 == pytest.approx(1.0)  # citations do not count against the answer's words
    assert not j.abstained


def test_judge_abstained_scores_zero() -> None:
    j = judge("", [], True, "anything at all")
    assert j.abstained and j.f1 == 0.0 and j.cited_docs == []


def test_citation_precision_over_answers_that_cite() -> None:
    judged = [
        Judged("a [1]", ["d1"], 1.0, False),  # right document
        Judged("b [1] [2]", ["d2", "dx"], 0.5, False),  # half right
        Judged("c", [], 0.2, False),  # cites nothing: not in precision, counts against cited_rate
        Judged("", [], 0.0, True),  # abstained
    ]
    m = rag_metrics(judged, ["d1", "d2", "d3", "d4"])
    assert m["citation_precision"] == 0.75
    assert m["citing_answers"] == 2
    assert m["cited_rate"] == round(2 / 3, 4)  # of the three answers given
    assert m["abstention_rate"] == 0.25
    assert m["answer_f1"] == round(1.7 / 4, 4)  # abstained answers score 0 and stay in the mean
    assert m["questions"] == 4


def test_declined_and_degenerate_cases() -> None:
    m = rag_metrics([Judged(NOT_IN_CONTEXT, [], 0.0, False), Judged("x", [], 0.0, False)], ["d", "d"])
    assert m["declined_rate"] == 0.5 and m["cited_rate"] == 0.0 and m["citation_precision"] == 0.0
    m = rag_metrics([Judged("", [], 0.0, True)], ["d"])
    assert m["abstention_rate"] == 1.0 and m["cited_rate"] == 0.0 and m["declined_rate"] == 0.0
