"""evaluation.rag_eval: judging RAG answers (citations as serving cleans them) and the stage's metrics."""

from __future__ import annotations

import polars as pl
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


def test_served_contexts_search_as_the_unit_says_and_assemble_sources() -> None:
    """A lexical unit (what the naive fallback or a BM25-best corpus serves) needs no embedder: the sources are
    its BM25 order, merged as serving merges neighbours, and lexical search never abstains by a cosine threshold."""
    from core.config import Params
    from core.retrieval_params import RetrievalParams
    from core.retrieval_unit import RetrievalConfig
    from evaluation.rag_eval import served_contexts

    unit = RetrievalConfig.of(
        RetrievalParams(), embedder_name="embedder", embedder_version="1", chunks_md5="x", chunking={},
        mode="lexical", metric="mrr@10", scores={}, reasons=[], abstain_threshold=0.9, abstain_score="dense",
    )  # fmt: skip
    chunks = pl.DataFrame({
        "chunk_id": ["a0", "a1", "b0", "c0"],
        "doc_id": ["a", "a", "b", "c"],
        "position": [0, 1, 0, 0],
        "text": ["zip archives are read by zipfile", "zipfile writes archives too", "json dumps objects", "tar files"],
    })  # fmt: skip
    ctx = served_contexts(Params(), unit, chunks, ["how are zip archives written"], lambda t: len(t.split()))
    assert ctx.abstained == [False]
    assert ctx.doc_ids[0][0] == "a"  # both of document a's neighbouring chunks, merged into the first source
    assert "zipfile writes archives too" in ctx.passages[0][0] and "read by zipfile" in ctx.passages[0][0]
    assert "a" not in ctx.doc_ids[0][1:]
