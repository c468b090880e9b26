"""The Kubernetes manifests (deploy/k8s): valid against the Kubernetes API schemas, and in agreement with what the
service declares (resources from params.yaml, BentoML's probe routes, the port, the GPU claim).

kubernetes-validate carries the API's JSON schemas in its wheel, so this runs offline. There is no kustomize here:
the test reads each kustomization's resource list and applies the GPU overlay's JSON 6902 patch itself (add and
replace, the only ops it uses), then validates what `kubectl apply -k` would send.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core.config import params
from core.serving_params import ServingParams
from serving.settings import service_resources

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES = "1.34.0"  # a release clusters run today; strict: unknown fields are errors


def _resources(kustomization: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load(kustomization.read_text())
    found: list[dict[str, Any]] = []
    for rel in k.get("resources", []):
        target = (kustomization.parent / rel).resolve()
        if target.is_dir():
            found += _resources(target / "kustomization.yaml")
        else:
            found += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch in k.get("patches", []):
        ops = yaml.safe_load((kustomization.parent / patch["path"]).read_text())
        for doc in found:
            if doc["kind"] == patch["target"]["kind"] and doc["metadata"]["name"] == patch["target"]["name"]:
                _apply(doc, ops)
    return found


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """JSON 6902 `add` / `replace` (RFC 6901 pointers: `~1` is `/`)."""
    for op in ops:
        assert op["op"] in ("add", "replace"), op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "replace":
            assert (key < len(node)) if isinstance(node, list) else (key in node), f"nothing to replace at {op['path']}"
        node[key] = copy.deepcopy(op["value"])


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_resource_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = _resources(K8S / "overlays" / overlay / "kustomization.yaml")
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises with the field that is wrong


def test_a_wrong_field_is_caught() -> None:
    """The validator is not a rubber stamp: a misspelt field fails."""
    deployment = _by_kind(_resources(K8S / "overlays" / "cpu" / "kustomization.yaml"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_deployment_agrees_with_the_service_declaration() -> None:
    serving = params().serving
    cpu = _by_kind(_resources(K8S / "overlays" / "cpu" / "kustomization.yaml"))
    container = cpu["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    declared = service_resources(serving, visible_gpus=0)
    assert container["resources"]["requests"] == {"cpu": declared["cpu"], "memory": declared["memory"]}
    assert container["resources"]["limits"]["memory"] == declared["memory"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"  # BentoML's: our __is_ready__
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"  # BentoML's: our __is_alive__
    assert container["ports"] == [{"name": "http", "containerPort": 3000}]  # bentoml serve's default port
    env = {e["name"]: e for e in container["env"]}
    for name in env:  # every SERVING_ variable names a real setting (or the index's Chroma switches)
        if name.startswith("SERVING_CHROMA_"):
            continue
        if name.startswith("SERVING_"):
            assert name.removeprefix("SERVING_").lower() in ServingParams.model_fields, name
    assert env["SERVING_CACHE_DIR"]["value"] == container["volumeMounts"][0]["mountPath"]
    secret = cpu["Secret"]["stringData"]
    for e in env.values():
        if "valueFrom" in e:
            assert e["valueFrom"]["secretKeyRef"]["key"] in secret, e
    labels = cpu["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = cpu[kind]["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items(), kind
    assert cpu["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == cpu["Deployment"]["metadata"]["name"]


def test_the_gpu_overlay_claims_the_gpu_the_service_declares() -> None:
    gpu = _by_kind(_resources(K8S / "overlays" / "gpu" / "kustomization.yaml"))
    container = gpu["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    claimed = service_resources(ServingParams(resources_gpu=int(env["SERVING_RESOURCES_GPU"])), visible_gpus=0)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == claimed["gpu"] == 1
    tolerations = gpu["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
