"""core.registry against a real MLflow registry in a temporary sqlite database (no mocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest

from core.errors import AliasNotFound, RegistryError, RegistryUnreachable, VersionNotFound
from core.registry import ModelRef, Registry


class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """The smallest model MLflow will log: a few kB of files, no weights."""

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        return model_input


def _log_model() -> str:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    return str(info.model_uri)


def test_register_promote_resolve_tag_and_download(registry: Registry, tmp_path: Path) -> None:
    assert registry.find("echo", "champion") is None  # no registered model yet: absent, not an error
    v1 = registry.register(_log_model(), "echo", {"git_commit": "abc"})
    assert registry.find("echo", "champion") is None  # the model exists, the alias not yet
    with pytest.raises(AliasNotFound, match=r"models:/echo@champion does not exist.*dvc repro"):
        registry.resolve("echo", "champion")

    registry.promote("echo", "champion", v1)
    registry.tag("echo", v1, {"gate.decision": "promoted"})
    info = registry.describe("echo", "champion")
    assert (info.version, info.tags) == (v1, {"git_commit": "abc", "gate.decision": "promoted"})
    assert info.run_id and info.description == ""
    registry.tag("echo", v1, {}, description="the model card")  # tags kept, the description set
    info = registry.describe("echo", "champion")
    assert (info.tags["gate.decision"], info.description) == ("promoted", "the model card")

    v2 = registry.register(_log_model(), "echo")
    assert int(v2) == int(v1) + 1
    assert registry.resolve("echo", "champion") == v1  # registering never moves the alias
    registry.promote("echo", "champion", v2)
    assert registry.resolve("echo", "champion") == v2

    # every call goes to this registry's URI, whatever the process-wide MLflow URIs say
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert registry.resolve("echo", "champion") == v2
    folder = registry.download("echo", v1, tmp_path / "v1")
    assert (folder / "MLmodel").is_file() and (folder / "python_model.pkl").is_file()
    assert (registry.download_uri("models:/echo@champion", tmp_path / "champ") / "MLmodel").is_file()
    with pytest.raises(VersionNotFound, match="models:/echo/9 does not exist"):
        registry.download("echo", "9", tmp_path / "v9")
    with pytest.raises(VersionNotFound):
        registry.promote("echo", "champion", "9")


def test_missing_database_is_unreachable_and_never_created(tmp_path: Path) -> None:
    gone = tmp_path / "gone" / "mlflow.db"
    registry = Registry(f"sqlite:///{gone}")
    with pytest.raises(RegistryUnreachable, match=r"registry database .* does not exist: run the pipeline"):
        registry.resolve("echo", "champion")
    with pytest.raises(RegistryUnreachable):
        registry.find("echo", "champion")  # unreachable is not "no champion yet"
    with pytest.raises(RegistryUnreachable):
        registry.download("echo", "1", tmp_path / "dl")
    with pytest.raises(RegistryUnreachable):
        registry.promote("echo", "champion", "1")
    assert not gone.parent.exists()  # MLflow would have created an empty registry here


def test_model_uris_parse_or_say_how_to_write_them() -> None:
    assert ModelRef.parse("models:/embedder@champion") == ModelRef("embedder", alias="champion")
    assert ModelRef.parse("models:/chat/3") == ModelRef("chat", version="3")
    assert str(ModelRef("chat", version="3")) == "models:/chat/3"
    for bad in ("models:/chat", "models:/chat/latest", "runs:/abc/model", "models:/@champion"):
        with pytest.raises(RegistryError, match=r"write `models:/NAME@ALIAS`"):
            ModelRef.parse(bad)
