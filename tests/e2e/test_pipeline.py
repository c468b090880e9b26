"""End to end: the real pipeline on the tiny profile in a private copy, then the champions in a fresh process.

The tiny profile's gate is relaxed (it proves the plumbing, not the quality), so these tests check what
the run can show: the numbers agree across evaluate.json, `dvc metrics show`, the recall plot and the
register report; the registry round trip gives back the very weights that were trained; and a strict
gate (a second register run in another copy) refuses the candidate and leaves the champion alone.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import copy_project, run

pytestmark = pytest.mark.slow


def _evaluate_json(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "artifacts/metrics/evaluate.json").read_text())


def _register_json(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "artifacts/reports/register.json").read_text())


def _names_the_numbers(reasons: list[str], candidate: float, base: float) -> None:
    # decide() writes `<metric>: candidate 0.1234 vs base 0.5678 (...)`: the report must carry the real scores
    first = reasons[0]
    assert f"candidate {candidate:.4f}" in first and f"base {base:.4f}" in first, reasons


def test_metrics_agree_across_dvc_the_plot_and_the_register_report(pipeline: Path) -> None:
    out = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline).stdout)
    # keyed by revision: "workspace" in some DVC versions, "" in others
    shown = next(iter(out.values()))["data"]["artifacts/metrics/evaluate.json"]["data"]
    metrics = _evaluate_json(pipeline)
    assert shown == metrics
    report = _register_json(pipeline)
    with open(pipeline / "artifacts/plots/recall_at_k.csv") as f:
        plot = {int(row["k"]): row for row in csv.DictReader(f)}
    for side, gate_field in (("base", "base"), ("finetuned", "candidate")):
        recall = metrics["embedder"][side]
        assert recall["recall@1"] <= recall["recall@5"] <= recall["recall@10"], recall  # recall@k grows with k
        assert report["embedder"][gate_field] == recall["recall@10"]
        for k in (1, 5, 10):
            assert float(plot[k][side]) == pytest.approx(recall[f"recall@{k}"])
        assert report["chat"][gate_field] == metrics["chat"][side]["eval_loss"]
    # LoRA on the held-out answers must lower their loss even after a few steps.
    assert metrics["chat"]["finetuned"]["eval_loss"] < metrics["chat"]["base"]["eval_loss"]


def test_second_repro_runs_nothing(pipeline: Path) -> None:
    status = run(["dvc", "status", "--json"], pipeline).stdout
    assert json.loads(status) == {}, status
    out = run(["dvc", "repro"], pipeline).stdout
    assert "Running stage" not in out, out


def test_register_report_names_the_numbers_and_moves_the_alias(pipeline: Path) -> None:
    metrics, report = _evaluate_json(pipeline), _register_json(pipeline)
    for name, metric in (("embedder", "recall@10"), ("chat", "eval_loss")):
        r = report[name]
        _names_the_numbers(r["reasons"], metrics[name]["finetuned"][metric], metrics[name]["base"][metric])
        assert r["previous_champion_version"] is None  # a fresh registry: nothing to compare with
        assert r["promote"] is True and r["champion_version"] == r["version"]


@pytest.fixture(scope="module")
def strict_register(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m evaluation.register` again, in a second copy, with a gate no tiny candidate can pass.

    The copy shares the first run's inputs (symlinks to its models, datasets and metrics) and gets its own
    copy of the registry database, so the first copy's reports and `dvc status` stay untouched. (New
    model files still land in the first copy's `state/mlartifacts`: the experiment's artifact location is
    an absolute path fixed at creation; they go under new ids, nothing there is overwritten.)
    """
    repo = copy_project(tmp_path_factory.mktemp("strict"))
    tiny = yaml.safe_load((repo / "profiles" / "tiny.yaml").read_text())
    # recall@10 cannot rise by more than 1.0, nor a loss fall by more than 100: both candidates must fail.
    tiny["gate"] |= {"embedder_min_gain": 1.0, "chat_min_gain": 100.0}
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny))
    for part in ("models", "datasets", "data", "metrics"):
        (repo / "artifacts").mkdir(exist_ok=True)
        (repo / "artifacts" / part).symlink_to(pipeline / "artifacts" / part)
    (repo / "state").mkdir()
    shutil.copy(pipeline / "state" / "mlflow.db", repo / "state" / "mlflow.db")
    run([sys.executable, "-m", "evaluation.register"], repo, timeout=900)
    return repo


def test_strict_gate_refuses_and_leaves_the_champion(pipeline: Path, strict_register: Path) -> None:
    metrics, first, report = _evaluate_json(pipeline), _register_json(pipeline), _register_json(strict_register)
    for name, metric in (("embedder", "recall@10"), ("chat", "eval_loss")):
        r = report[name]
        assert r["promote"] is False, r
        _names_the_numbers(r["reasons"], metrics[name]["finetuned"][metric], metrics[name]["base"][metric])
        assert any("-> FAIL" in reason and "needs > " in reason for reason in r["reasons"]), r["reasons"]
        assert int(r["version"]) == int(first[name]["version"]) + 1  # registered, as a rejected version
        assert r["previous_champion_version"] == r["champion_version"] == first[name]["version"]
    # and the registry itself says so, read in a fresh process through core.registry
    script = textwrap.dedent(
        """
        import json
        from core.registry import Registry

        reg = Registry()
        out = {}
        for name in ("embedder", "chat"):
            champion = reg.describe(name, "champion")
            out[name] = {"champion": champion.version, "decision": champion.tags.get("gate.decision")}
        print(json.dumps(out))
        """
    )
    seen = json.loads(run([sys.executable, "-c", script], strict_register).stdout.strip().splitlines()[-1])
    for name in ("embedder", "chat"):
        assert seen[name] == {"champion": first[name]["version"], "decision": "promoted"}, seen


def test_champions_load_in_a_fresh_process(pipeline: Path) -> None:
    script = textwrap.dedent(
        """
        import json
        import torch
        from core import paths
        from core.config import params
        from core.loading import load_chat, load_embedder
        from core.registry import Registry
        from core.vectorstore import chroma_client, read_active

        reg = Registry()
        emb_version = reg.describe("embedder", "champion")
        chat_version = reg.describe("chat", "champion")
        tags = emb_version.tags
        assert "git_commit" in tags and "data.chunks.md5" in tags and tags["gate.decision"] == "promoted", tags

        # the registry gives back the weights the pipeline trained: same embeddings, same logits
        texts = ["json: dumps", "how to open a file"]
        embedder = load_embedder("models:/embedder@champion", device="cpu")
        vecs = embedder.encode(texts, normalize_embeddings=True, convert_to_tensor=True)
        local = load_embedder(paths.EMBEDDER_MODEL, device="cpu").encode(
            texts, normalize_embeddings=True, convert_to_tensor=True
        )
        emb_diff = float((vecs - local).abs().max())

        model, tok = load_chat("models:/chat@champion", device="cpu")
        local_model, _ = load_chat(paths.CHAT_MODEL, device="cpu")
        enc = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            chat_diff = float((model(**enc).logits - local_model(**enc).logits).abs().max())

        active = read_active(chroma_client(params().index))
        assert active is not None and str(active.embedder_version) == emb_version.version, active
        coll = chroma_client(params().index).get_collection(active.collection)
        hit = coll.query(query_embeddings=embedder.encode(["json: dumps"], normalize_embeddings=True), n_results=3)
        print(json.dumps({"embedder": emb_version.version, "chat": chat_version.version, "emb_diff": emb_diff,
                          "chat_diff": chat_diff, "hits": hit["ids"][0], "count": coll.count()}))
        """
    )
    proc = run([sys.executable, "-c", script], pipeline, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = _register_json(pipeline)
    assert (result["embedder"], result["chat"]) == (report["embedder"]["version"], report["chat"]["version"])
    assert result["emb_diff"] < 1e-5 and result["chat_diff"] < 1e-4, result
    assert result["count"] > 0 and len(result["hits"]) == 3
