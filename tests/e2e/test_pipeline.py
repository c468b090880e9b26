"""End to end: the real pipeline on the tiny profile in a private copy, then the champions in a fresh process."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


def test_metrics_list_recall_for_base_and_finetuned(pipeline: Path) -> None:
    out = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline).stdout)
    # keyed by revision: "workspace" in some DVC versions, "" in others
    metrics = next(iter(out.values()))["data"]["artifacts/metrics/evaluate.json"]["data"]
    assert set(metrics["embedder"]) == {"base", "finetuned"}
    for side in ("base", "finetuned"):
        assert 0.0 <= metrics["embedder"][side]["recall@10"] <= 1.0
        assert metrics["chat"][side]["eval_loss"] > 0
    # LoRA on the held-out answers must lower their loss even after a few steps.
    assert metrics["chat"]["finetuned"]["eval_loss"] < metrics["chat"]["base"]["eval_loss"]


def test_second_repro_runs_nothing(pipeline: Path) -> None:
    status = run(["dvc", "status", "--json"], pipeline).stdout
    assert json.loads(status) == {}, status
    out = run(["dvc", "repro"], pipeline).stdout
    assert "Running stage" not in out, out


def test_register_report_and_lineage(pipeline: Path) -> None:
    report = json.loads((pipeline / "artifacts/reports/register.json").read_text())
    for name in ("embedder", "chat"):
        assert report[name]["promote"] is True
        assert report[name]["champion_version"] == report[name]["version"]
        assert report[name]["reasons"]


def test_champions_load_in_a_fresh_process(pipeline: Path) -> None:
    script = textwrap.dedent(
        """
        import json
        import mlflow, torch
        from mlflow import MlflowClient
        from core.config import params, tracking_uri
        from core.loading import load_chat, load_embedder
        from core.vectorstore import chroma_client, read_active

        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        emb_version = client.get_model_version_by_alias("embedder", "champion")
        chat_version = client.get_model_version_by_alias("chat", "champion")
        tags = emb_version.tags
        assert "git_commit" in tags and "data.chunks.md5" in tags, tags

        embedder = load_embedder("models:/embedder@champion")
        vecs = embedder.encode(["json: dumps", "how to open a file"], normalize_embeddings=True)
        assert vecs.shape[0] == 2 and abs(float((vecs[0] ** 2).sum()) - 1) < 1e-4

        model, tok = load_chat("models:/chat@champion")
        enc = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert out.shape[1] > enc["input_ids"].shape[1]

        active = read_active(chroma_client(params().index))
        assert active is not None and str(active.embedder_version) == str(emb_version.version), active
        coll = chroma_client(params().index).get_collection(active.collection)
        hit = coll.query(query_embeddings=embedder.encode(["json: dumps"], normalize_embeddings=True), n_results=3)
        print(json.dumps({"embedder": emb_version.version, "chat": chat_version.version, "text": text,
                          "hits": hit["ids"][0], "count": coll.count()}))
        """
    )
    proc = run([sys.executable, "-c", script], pipeline, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["count"] > 0 and len(result["hits"]) == 3
