"""Lexical search, rank fusion, the evaluation's mode rankings, the mode choice and the registered unit."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from core.fusion import reciprocal_rank_fusion
from core.lexical import LexicalIndex
from core.registry import Registry
from core.retrieval_params import RetrievalParams
from core.retrieval_unit import (
    ARTIFACT,
    LexicalSearchModel,
    RetrievalConfig,
    UnitUnavailable,
    champion_unit,
    read_unit,
    unit_chunks,
    write_unit,
)
from core.tracking import file_md5
from evaluation.register_retrieval import Candidate, choose_candidate, choose_mode, reranker_decision, versus_naive
from evaluation.retrieval import (
    document_metrics,
    hybrid_rankings,
    lexical_rankings,
    rerank_rankings,
    to_documents,
)

TEXTS = {
    "a": "json.dumps converts a Python object to a JSON string.",
    "b": "Reading files line by line with a for loop over the file object.",
    "c": "Lists are mutable sequences; tuples are immutable.",
    "d": "The zipfile module reads and writes ZIP archives.",
}


def _index(stemmer: str = "english") -> LexicalIndex:
    return LexicalIndex.build(list(TEXTS), list(TEXTS.values()), stemmer)


# ---- fusion -----------------------------------------------------------------------------------------


def test_rrf_adds_weighted_reciprocal_ranks() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "b"], ["b", "c"]], [1.0, 2.0], k=10))
    assert fused == pytest.approx({"a": 1 / 11, "b": 1 / 12 + 2 / 11, "c": 2 / 12})
    assert [i for i, _ in reciprocal_rank_fusion([["a", "b"], ["b", "c"]], [1.0, 2.0], k=10)] == ["b", "c", "a"]


def test_rrf_keeps_a_lone_list_and_breaks_ties_by_first_seen() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([["x", "y", "z"], []], [1.0, 1.0])] == ["x", "y", "z"]
    # x and y each at rank 1 in one list: equal scores, the first list's item first
    assert [i for i, _ in reciprocal_rank_fusion([["x"], ["y"]], [1.0, 1.0])] == ["x", "y"]
    # a zero weight silences a list (its items still come last, in order)
    assert [i for i, _ in reciprocal_rank_fusion([["x", "y"], ["y", "q"]], [1.0, 0.0])] == ["x", "y", "q"]


@pytest.mark.parametrize(
    ("rankings", "weights", "k", "match"),
    [([["a"]], [1.0, 1.0], 60, "1 rankings but 2 weights"), ([["a"]], [-1.0], 60, ">= 0"), ([["a"]], [1.0], 0, "k")],
)
def test_rrf_refuses_bad_arguments(rankings: list[list[str]], weights: list[float], k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reciprocal_rank_fusion(rankings, weights, k)


# ---- lexical index -----------------------------------------------------------------------------------


def test_lexical_search_stems_drops_stopwords_and_skips_non_matching_chunks() -> None:
    ix = _index()
    hits = ix.search(["reading files", "the of and", "json tuples"], k=10)
    assert [c for c, _ in hits[0]] == ["b", "d"]  # "reads" and "reading" share a stem with "read"
    assert hits[1] == []  # only stopwords: nothing matches, nothing is made up
    assert {c for c, _ in hits[2]} == {"a", "c"} and all(s > 0 for _, s in hits[2])
    unstemmed = _index("none").search(["reading files"], k=10)[0]
    assert [c for c, _ in unstemmed] == ["b"]  # without stemming "reads" does not match "reading"


def test_lexical_mask_and_k_larger_than_the_index() -> None:
    ix = _index()
    mask = np.array([0, 0, 0, 1], dtype=np.float32)
    assert [c for c, _ in ix.search(["reading files"], k=50, allowed=mask)[0]] == ["d"]


def test_lexical_index_round_trips_through_files(tmp_path: Path) -> None:
    ix = _index()
    ix.save(tmp_path / "lex")
    again = LexicalIndex.load(tmp_path / "lex")
    assert again.ids == ix.ids and again.stemmer == "english"
    assert again.search(["zip archives"], 2) == ix.search(["zip archives"], 2)
    with pytest.raises(ValueError, match="no chunks"):
        LexicalIndex.build([], [])
    with pytest.raises(FileNotFoundError):
        LexicalIndex.load(tmp_path / "missing")


# ---- the evaluation's rankings -------------------------------------------------------------------------


def test_hybrid_rankings_fuse_chunk_rows_then_documents_dedupe() -> None:
    dense, lexical = [[0, 1, 2]], [[2, 3]]  # row 2 is dense's third: cut off by `candidates`
    # equal weights: 0 and 2 tie at 1/2 (dense's first wins), 1 and 3 at 1/3
    assert hybrid_rankings(dense, lexical, RetrievalParams(candidates=2, rrf_k=1)) == [[0, 2, 1, 3]]
    fused = hybrid_rankings(dense, lexical, RetrievalParams(candidates=2, rrf_k=1, lexical_weight=2.0))
    assert fused == [[2, 3, 0, 1]]  # 2/2, 2/3, 1/2, 1/3
    docs = to_documents(fused, ["d0", "d0", "d1", "d2"], depth=10)
    assert docs == [["d1", "d2", "d0"]]
    assert document_metrics(docs, ["d0"], (1, 10)) == {
        "recall@1": 0.0,
        "recall@10": 1.0,
        "mrr@10": 0.3333,
        "ndcg@10": 0.5,
    }


def test_lexical_rankings_are_rows_of_the_index() -> None:
    assert lexical_rankings(_index(), ["zip archives", "zzqx"], 10) == [[3], []]


# ---- choosing the served mode ----------------------------------------------------------------------------


def test_choose_mode_takes_the_best_and_the_first_listed_on_a_tie() -> None:
    scores = {"dense": {"mrr@10": 0.8}, "hybrid": {"mrr@10": 0.8}, "lexical": {"mrr@10": 0.7}}
    mode, reasons = choose_mode(scores, "mrr@10", ["dense", "hybrid", "lexical"])
    assert mode == "dense" and reasons[0] == "dense: mrr@10 0.8000 -> chosen"
    assert choose_mode(scores, "mrr@10", ["hybrid", "dense"])[0] == "hybrid"
    scores["lexical"]["mrr@10"] = 0.9
    mode, reasons = choose_mode(scores, "mrr@10", ["dense", "hybrid", "lexical"])
    assert mode == "lexical" and reasons[1] == "dense: mrr@10 0.8000 (-0.1000)"


def test_the_best_candidate_is_served_only_when_it_beats_the_naive_recipe() -> None:
    tuned = Candidate("champion", "hybrid", {"mrr@10": 0.84})
    base = Candidate("base", "hybrid", {"mrr@10": 0.86})
    naive = {"mrr@10": 0.79}
    chosen, reasons = choose_candidate([tuned, base], naive, "mrr@10", 0.0, "8")
    assert chosen == base and reasons[0] == "hybrid search with embedder v8: mrr@10 0.8400"
    assert reasons[-1].startswith("hybrid search with the base embedder beats the naive recipe's 0.7900 by +0.0700")
    kept = Candidate("candidate", "hybrid", {"mrr@10": 0.88}, reranked=True)  # a candidate the embedder gate refused
    chosen, reasons = choose_candidate([tuned, kept, base], naive, "mrr@10", 0.0, "8")
    assert (
        chosen == kept
        and reasons[1] == "hybrid search with the fine-tuned candidate embedder + reranker: mrr@10 0.8800"
    )
    tie = Candidate("base", "dense", {"mrr@10": 0.84})
    assert choose_candidate([tuned, tie], naive, "mrr@10", 0.0, "8")[0] == tuned  # a tie: the first
    # nothing beats it by more than the gate asks (a tie does not beat it): the naive recipe is served
    for min_gain, best in ((0.1, 0.84), (0.0, 0.79)):
        only = [Candidate("champion", "dense", {"mrr@10": best})]
        chosen, reasons = choose_candidate(only, naive, "mrr@10", min_gain, "8")
        assert chosen == Candidate("naive", "dense", naive)
        assert reasons[-1].endswith("-> the naive recipe is served")


def test_versus_naive_reports_gains_per_metric() -> None:
    out = versus_naive("mrr@10", {"mrr@10": 0.84, "recall@10": 0.95}, {"mrr@10": 0.79, "recall@10": 0.96}, "hybrid")
    assert out["gains"] == {"mrr@10": 0.05, "recall@10": -0.01}
    assert out["summary"].startswith("hybrid mrr@10 0.84 beats the naive recipe's 0.79 (+0.0500)")


# ---- the registered unit -----------------------------------------------------------------------------------


def _config() -> RetrievalConfig:
    return RetrievalConfig.of(
        RetrievalParams(),
        embedder_name="embedder",
        embedder_version="3",
        chunks_md5="abc",
        chunking={"chunk_tokens": 200},
        mode="hybrid",
        metric="mrr@10",
        scores={"hybrid": {"mrr@10": 0.84}},
        reasons=["hybrid: mrr@10 0.8400 -> chosen"],
    )


def test_unit_logged_registered_downloaded_and_loaded_as_pyfunc(tmp_path: Path, registry: Registry) -> None:
    """Through a real (temporary sqlite) MLflow registry: what the server downloads reads back whole, and
    `mlflow.pyfunc.load_model` answers queries with the lexical half."""
    lexical_dir, chunks_file = tmp_path / "lexical", tmp_path / "chunks.parquet"
    _index().save(lexical_dir)
    pl.DataFrame({"chunk_id": list(TEXTS), "text": list(TEXTS.values())}).write_parquet(chunks_file)
    write_unit(tmp_path / "unit", _config(), lexical_dir, chunks_file)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="retrieval", python_model=LexicalSearchModel(), artifacts={ARTIFACT: str(tmp_path / "unit")}
        )
    version = registry.register(str(info.model_uri), "retrieval")
    folder = registry.download("retrieval", version, tmp_path / "dl")
    config, lexical = read_unit(folder)
    assert config == _config() and lexical.ids == list(TEXTS)
    assert unit_chunks(folder).read_bytes() == chunks_file.read_bytes()  # the index stage builds from these
    model = mlflow.pyfunc.load_model(f"models:/retrieval/{version}")
    out = model.predict(["zip archives"], params={"top_k": 2})
    assert out[0]["query"] == "zip archives" and out[0]["chunk_ids"] == ["d"]
    with pytest.raises(FileNotFoundError, match=r"retrieval\.json"):
        read_unit(tmp_path / "lexical")


def test_champion_unit_is_what_the_alias_names_and_refuses_other_chunks(tmp_path: Path, registry: Registry) -> None:
    """The index stage and the RAG evaluation read the served unit through `champion_unit`."""
    lexical_dir, chunks_file = tmp_path / "lexical", tmp_path / "chunks.parquet"
    _index().save(lexical_dir)
    pl.DataFrame({"chunk_id": list(TEXTS), "text": list(TEXTS.values())}).write_parquet(chunks_file)
    with pytest.raises(UnitUnavailable, match="register stage has not run"):
        champion_unit("retrieval", "champion", tmp_path / "none", registry)
    versions = []
    for md5 in (file_md5(chunks_file), "not-these-chunks"):
        write_unit(tmp_path / md5, _config().model_copy(update={"chunks_md5": md5}), lexical_dir, chunks_file)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="retrieval", python_model=LexicalSearchModel(), artifacts={ARTIFACT: str(tmp_path / md5)}
            )
        versions.append(registry.register(str(info.model_uri), "retrieval"))
    registry.promote("retrieval", "champion", versions[0])
    version, config, chunks = champion_unit("retrieval", "champion", tmp_path / "a", registry)
    assert version == versions[0] and config.mode == "hybrid" and chunks["chunk_id"].to_list() == list(TEXTS)
    registry.promote("retrieval", "champion", versions[1])
    with pytest.raises(UnitUnavailable, match="md5 mismatch"):
        champion_unit("retrieval", "champion", tmp_path / "b", registry)


def test_abstention_applies_only_the_threshold_measured_on_that_kind_of_score() -> None:
    c = _config().model_copy(update={"abstain_threshold": 0.4, "abstain_score": "dense"})
    assert c.abstains(0.3, "dense", None) and not c.abstains(0.5, "dense", None)
    assert c.abstains(None, "dense", None)  # no dense hit at all
    assert not c.abstains(0.0, "reranker", None)  # a threshold on cosine says nothing about reranker scores
    assert not c.abstains(None, None, None)  # lexical only: no fixed scale, never abstains by the threshold
    assert c.abstains(0.5, "dense", 0.6) and not c.abstains(0.3, "dense", 0.2)  # the request's min_score wins
    assert not _config().abstains(0.0, "dense", None)  # no threshold measured: always answers


# ---- reranking -------------------------------------------------------------------------------------------


class _WordOverlap:
    """A stand-in scorer with a known order (shared words), so the reordering logic is what is tested."""

    def predict(self, pairs: list[tuple[str, str]], **_: object) -> list[float]:
        return [float(len(set(q.lower().split()) & set(t.lower().split()))) for q, t in pairs]


def test_rerank_reorders_only_the_head_and_keeps_ties_in_first_stage_order() -> None:
    texts = ["alpha beta", "gamma", "alpha", "beta gamma delta", "alpha beta gamma"]
    rankings = [[1, 2, 0, 4, 3]]
    out, scores, ms = rerank_rankings(_WordOverlap(), ["alpha beta gamma"], texts, rankings, top=3)  # type: ignore[arg-type]
    # head [1, 2, 0] scores [1, 1, 2] -> 0 first, then 1 and 2 in their first-stage order; the tail stays
    assert out == [[0, 1, 2, 4, 3]] and scores == [[2.0, 1.0, 1.0]] and ms >= 0
    assert rerank_rankings(_WordOverlap(), ["x"], texts, [[]], top=3)[0] == [[]]  # type: ignore[arg-type]


def test_reranker_gate_needs_a_gain_over_the_best_mode() -> None:
    ok, reason = reranker_decision("mrr@10", 0.86, 0.84, "hybrid", 0.0)
    assert ok and reason == "hybrid + reranker: mrr@10 0.8600 vs hybrid 0.8400 (+0.0200; needs > 0.0) -> pass"
    ok, reason = reranker_decision("mrr@10", 0.80, 0.84, "hybrid", 0.0)
    assert not ok and reason.endswith("FAIL, served without the reranker")
