"""Stage select_chunking: the grid of candidates, the choice, and the chosen chunking every later stage reads."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

from core import paths
from core.chunking import ChunkingNotChosen, chosen_chunking
from core.config import ChunkingParams, ChunkParams, Params
from evaluation.select_chunking import choose, score_candidates


def test_grid_lays_candidates_over_the_defaults_without_repeats() -> None:
    base = ChunkParams(chunk_tokens=200, overlap_tokens=32, min_chunk_tokens=5)
    grid = ChunkingParams(
        grid=({"chunk_tokens": 128, "overlap_tokens": 16}, {"method": "chars"}, {}, {"chunk_tokens": 200})
    )
    got = grid.candidates(base)
    assert [c.name for c in got] == ["tokens-128-16", "chars-1000-200", "tokens-200-32"]
    assert all(c.min_chunk_tokens == 5 for c in got)
    assert [c.name for c in ChunkingParams().candidates(base)] == ["tokens-200-32"]  # no grid: the defaults alone


def test_a_bad_grid_entry_fails_when_params_load_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"data.chunking.grid\[1\]"):
        Params.model_validate({"data": {"chunking": {"grid": [{}, {"chunk_tokens": 64, "overlap_tokens": 64}]}}})
    with pytest.raises(ValidationError, match=r"grid\[0\].*Extra inputs"):
        Params.model_validate({"data": {"chunking": {"grid": [{"chunk_tokns": 64}]}}})


def test_choose_takes_the_best_score_in_the_selecting_mode_and_the_first_on_a_tie() -> None:
    scores = {
        "tokens-128-16": {"hybrid": {"mrr@10": 0.70}, "dense": {"mrr@10": 0.90}},
        "tokens-200-32": {"hybrid": {"mrr@10": 0.75}, "dense": {"mrr@10": 0.60}},
        "chars-1000-200": {"hybrid": {"mrr@10": 0.75}, "dense": {"mrr@10": 0.60}},
    }
    best, reasons = choose(scores, "hybrid", "mrr@10")
    assert best == "tokens-200-32"
    assert reasons[0].endswith("-> chosen") and "(-0.0500)" in reasons[-1]
    assert choose(scores, "dense", "mrr@10")[0] == "tokens-128-16"


def test_chosen_chunking_reads_the_stage_output_and_refuses_a_stale_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(paths, "CHUNKING", tmp_path / "chunking.json")
    p = Params.model_validate(
        {"data": {"chunking": {"grid": [{"chunk_tokens": 128, "overlap_tokens": 16}, {"method": "chars"}]}}}
    )
    with pytest.raises(ChunkingNotChosen, match="dvc repro select_chunking"):
        chosen_chunking(p)
    naive = p.data.chunking.candidates(p.data.chunk)[1]
    paths.CHUNKING.write_text(json.dumps({"chunk": naive.model_dump()}))
    assert chosen_chunking(p) == naive and chosen_chunking(p).method == "chars"
    without = Params.model_validate({"data": {"chunking": {"grid": [{"chunk_tokens": 128, "overlap_tokens": 16}]}}})
    with pytest.raises(ChunkingNotChosen, match="no longer offer"):
        chosen_chunking(without)


def test_every_candidate_is_scored_in_every_mode_on_the_same_questions() -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from core.specs import resolve

    path = resolve(Params().models.embedder_base)
    topics = ["sockets and network ports", "file paths and folders", "dates and time zones", "regular expressions"]
    docs = pl.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(4)],
            "source": [f"{i}.md" for i in range(4)],
            "title": topics,
            "text": [
                f"# {t}\n\n" + " ".join(f"This part explains {t} in detail, step {k}." for k in range(30))
                for t in topics
            ],
        }
    )
    questions = pl.DataFrame({"query": [f"How do I work with {t}?" for t in topics], "doc_id": docs["doc_id"]})
    p = Params()
    candidates = [
        ChunkParams(chunk_tokens=64, overlap_tokens=8),
        ChunkParams(method="chars", chunk_chars=400, overlap_chars=80),
    ]
    scores = score_candidates(
        candidates, docs, questions, SentenceTransformer(str(path)), AutoTokenizer.from_pretrained(path), p
    )
    assert list(scores) == ["tokens-64-8", "chars-400-80"]
    for s in scores.values():
        assert set(s) == {"dense", "lexical", "hybrid", "chunks", "params"}
        assert s["dense"]["recall@10"] == 1.0  # four documents: every one is in the first ten
        assert s["dense"]["mrr@10"] > 0.5
    assert scores["chars-400-80"]["params"]["method"] == "chars"
