"""RAG context assembly: dedupe, neighbour merge without repeating the overlap, order, budget."""

from __future__ import annotations

from core.context import Passage, assemble


def _p(cid: str, text: str, score: float, doc: str = "d1", pos: int = 0) -> Passage:
    return Passage(cid, text, score, {"doc_id": doc, "position": pos, "heading": f"h{pos}"})


def _words(text: str) -> int:
    return len(text.split())


def test_neighbours_merge_in_document_order_and_the_overlap_is_written_once() -> None:
    a = _p("c1", "json.dumps serialises an object to a JSON formatted string.", 0.5, pos=1)
    b = _p("c2", "to a JSON formatted string. It takes indent and sort_keys.", 0.9, pos=2)
    other = _p("x", "Lists are mutable sequences.", 0.7, doc="d2", pos=2)
    sources = assemble([a, b, other, b], _words, budget_tokens=1000)
    assert [s.number for s in sources] == [1, 2]
    first, second = sources
    assert first.chunk_ids == ["c1", "c2"] and first.score == 0.9  # ordered by the best hit, chunks in doc order
    assert first.text == "json.dumps serialises an object to a JSON formatted string. It takes indent and sort_keys."
    assert second.chunk_ids == ["x"] and second.metadata["doc_id"] == "d2"


def test_far_apart_chunks_of_one_document_stay_separate_sources() -> None:
    sources = assemble([_p("a", "alpha", 0.9, pos=1), _p("b", "beta", 0.8, pos=5)], _words, 100, neighbour_window=1)
    assert [s.chunk_ids for s in sources] == [["a"], ["b"]]
    merged = assemble([_p("a", "alpha", 0.9, pos=1), _p("b", "beta", 0.8, pos=3)], _words, 100, neighbour_window=2)
    assert [s.chunk_ids for s in merged] == [["a", "b"]] and merged[0].text == "alpha\n…\nbeta"


def test_the_budget_stops_adding_sources_and_cuts_a_lone_first_one() -> None:
    hits = [_p(f"c{i}", "word " * 10, 1.0 - i / 10, doc=f"d{i}") for i in range(5)]
    assert len(assemble(hits, _words, budget_tokens=25)) == 2
    (only,) = assemble([_p("big", "word " * 100, 1.0)], _words, budget_tokens=10)
    assert _words(only.text) <= 10 and only.number == 1
    assert assemble([], _words, 10) == []


def test_a_merged_source_spans_its_chunks_and_spanless_hits_have_none() -> None:
    a = Passage("c1", "first part", 0.5, {"doc_id": "d", "position": 1, "start": 100, "end": 400})
    b = Passage("c2", "second part", 0.9, {"doc_id": "d", "position": 2, "start": 350, "end": 700})
    old = Passage("x", "indexed before spans", 0.7, {"doc_id": "e", "position": 0})
    merged, spanless = assemble([a, b, old], _words, budget_tokens=100)
    assert merged.chunk_ids == ["c1", "c2"] and merged.span == (100, 700)
    assert spanless.span is None
