"""The model registry (MLflow): the one module that calls it.

    resolve   `name@alias` -> version            `resolve` (raises), `find` (None when absent)
    download  a version's files into a folder    `download`, `download_uri`
    register  a logged model as a new version    `register`
    tag       notes on a version                 `tag`
    promote   move an alias to a version         `promote`

Every failure is one of `core.errors`' registry errors, with a message that says what to do:
`RegistryUnreachable` (no database file, no server), `AliasNotFound`, `VersionNotFound`, else
`RegistryError`. What a failure means is the caller's business: the register stage reads a missing
alias as "no champion yet", the index stage stops, the server falls back to its cache.

The registry URI is the tracking URI (`core.config.tracking_uri()` unless given): one database holds
runs, logged models and registered versions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from core.config import tracking_uri
from core.errors import AliasNotFound, RegistryError, RegistryUnreachable, VersionNotFound

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")
_SCHEME = "models:/"
# MLflow's error codes for "there is no such thing" (a missing alias is INVALID_PARAMETER_VALUE in 3.17)
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass(frozen=True)
class ModelRef:
    """A registry model URI, parsed: `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """Parse a `models:/` URI.

        Raises:
            RegistryError: `uri` is not `models:/NAME@ALIAS` or `models:/NAME/VERSION`.
        """
        rest = uri.removeprefix(_SCHEME) if uri.startswith(_SCHEME) else ""
        if "@" in rest and "/" not in rest:
            name, alias = rest.split("@", 1)
            if name and alias:
                return cls(name, alias=alias)
        elif rest.count("/") == 1:
            name, version = rest.split("/")
            if name and version.isdigit():
                return cls(name, version=version)
        raise RegistryError(
            f"{uri!r} is not a registry model URI: write `models:/NAME@ALIAS` (e.g. models:/embedder@champion) "
            "or `models:/NAME/VERSION` (e.g. models:/chat/3)"
        )

    def __str__(self) -> str:
        return f"{_SCHEME}{self.name}@{self.alias}" if self.alias else f"{_SCHEME}{self.name}/{self.version}"


def is_model_uri(source: object) -> bool:
    """Whether `source` names a registry model (`models:/...`) rather than a local folder."""
    return isinstance(source, str) and source.startswith(_SCHEME)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its number, tags and the run that logged it."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    """The version's model card (shown in the MLflow UI)."""


class Registry:
    """The MLflow model registry at one URI.

    Args:
        uri: tracking/registry URI (`sqlite:///...`, `http://...`); default `core.config.tracking_uri()`.
    """

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()

    # ---- the calls -------------------------------------------------------------------------------

    def resolve(self, name: str, alias: str) -> str:
        """The version `name@alias` points at.

        Raises:
            AliasNotFound: no such registered model, or the alias is not set on it.
            RegistryUnreachable: the registry cannot be reached.
        """
        return self.describe(name, alias).version

    def find(self, name: str, alias: str) -> str | None:
        """Like `resolve`, but None when the model or the alias does not exist (yet).

        Raises:
            RegistryUnreachable: the registry cannot be reached (that is not "absent").
        """
        try:
            return self.resolve(name, alias)
        except AliasNotFound:
            return None

    def describe(self, name: str, alias: str) -> VersionInfo:
        """The version `name@alias` points at, with its tags and run.

        Raises:
            AliasNotFound: no such registered model, or the alias is not set on it.
            RegistryUnreachable: the registry cannot be reached.
        """
        mv = self._call(
            f"resolving {_SCHEME}{name}@{alias}",
            lambda c: c.get_model_version_by_alias(name, alias),
            not_found=lambda why: AliasNotFound(
                f"{_SCHEME}{name}@{alias} does not exist in {self.uri} ({why}): run the pipeline (`dvc repro`) until "
                f"the promotion gate passes, or point the alias at a version "
                f"(`MlflowClient().set_registered_model_alias('{name}', '{alias}', VERSION)`)"
            ),
        )
        return VersionInfo(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}), mv.description or "")

    def download(self, name: str, version: str, dest: Path) -> Path:
        """Download version `version` of `name` (its MLflow model folder) into `dest`.

        Returns:
            `dest`, now holding the model's files (`MLmodel` and the flavour's folders).

        Raises:
            VersionNotFound: `name` has no such version.
            RegistryUnreachable: the registry (or its artifact store) cannot be reached.
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = f"{_SCHEME}{name}/{version}"
        # Where the version's files live (the logged model's artifact folder), then that folder's contents.
        # Not `download_artifacts("models:/...", registry_uri=...)`: MLflow 3.17 resolves a `models:/` URI
        # with the process-wide registry URI and ignores the argument (ModelsArtifactRepository
        # ._get_model_uri_infos), so a process whose global URI points elsewhere reads the wrong registry.
        source = self._call(
            f"looking up {uri}",
            lambda c: c.get_model_version_download_uri(name, version),
            not_found=lambda why: VersionNotFound(
                f"{uri} does not exist in {self.uri} ({why}): check the version number "
                f"(the register stage writes it to artifacts/reports/register.json)"
            ),
        )
        dest.mkdir(parents=True, exist_ok=True)
        try:
            get_artifact_repository(source, tracking_uri=self.uri).download_artifacts("", dst_path=str(dest))
        except Exception as e:
            raise RegistryUnreachable(
                f"downloading {uri} ({source}) from {self.uri} failed ({type(e).__name__}: {e}): check that the "
                f"artifact store it points at is reachable from here"
            ) from e
        return dest

    def download_uri(self, model_uri: str, dest: Path) -> Path:
        """Download the version a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI names into `dest`.

        Raises:
            RegistryError: the URI is malformed, or any error `resolve` and `download` raise.
        """
        ref = ModelRef.parse(model_uri)
        version = ref.version or self.resolve(ref.name, ref.alias or "")
        return self.download(ref.name, version, dest)

    def register(self, model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
        """Register a logged model (`models:/<model_id>`, what `core.tracking.log_*_model` return) as a new version.

        Returns:
            The new version number.

        Raises:
            RegistryUnreachable: the registry cannot be reached.
            RegistryError: MLflow refused (e.g. the logged model does not exist in this tracking store).
        """
        import mlflow

        self._check_reachable()
        # The fluent call, not MlflowClient.create_model_version: it creates the registered model on first
        # use, finds the run behind MLflow 3's `models:/<model_id>` URI and links the version back to the
        # logged model. It reads the process-wide URIs, so point them at this registry first.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            mv = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
        except Exception as e:
            raise self._translate(f"registering {model_uri} as {name!r}", e) from e
        return str(mv.version)

    def tag(self, name: str, version: str, tags: Mapping[str, str], description: str | None = None) -> None:
        """Set tags on a version (e.g. the gate's decision and reasons), and its description (the model card the
        MLflow UI shows) when one is given.

        Raises:
            VersionNotFound: `name` has no such version.
            RegistryUnreachable: the registry cannot be reached.
        """

        def set_all(client: MlflowClient) -> None:
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            if description is not None:
                client.update_model_version(name, version, description=description)

        self._call(
            f"tagging {_SCHEME}{name}/{version}",
            set_all,
            not_found=lambda why: VersionNotFound(
                f"cannot tag {_SCHEME}{name}/{version}: it does not exist in {self.uri} ({why})"
            ),
        )

    def promote(self, name: str, alias: str, version: str) -> None:
        """Point `name@alias` at `version` (creating the alias, or moving it from the version it was on).

        Raises:
            VersionNotFound: `name` has no such version.
            RegistryUnreachable: the registry cannot be reached.
        """
        self._call(
            f"moving {_SCHEME}{name}@{alias} to version {version}",
            lambda c: c.set_registered_model_alias(name, alias, version),
            not_found=lambda why: VersionNotFound(
                f"cannot point {_SCHEME}{name}@{alias} at version {version}: it does not exist in {self.uri} ({why})"
            ),
        )

    # ---- one way to call MLflow and one way to read its failures ---------------------------------

    def _check_reachable(self) -> None:
        """Refuse a sqlite URI whose file does not exist: MLflow would silently create an empty registry there."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            if not db.is_file():
                raise RegistryUnreachable(
                    f"the registry database {db} does not exist: run the pipeline (`dvc repro`) in this project "
                    f"to create it, or set MLFLOW_TRACKING_URI to the registry that holds the models"
                )

    def _client(self) -> MlflowClient:
        from mlflow import MlflowClient

        self._check_reachable()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _call(
        self, what: str, fn: Callable[[MlflowClient], T], *, not_found: Callable[[str], RegistryError] | None = None
    ) -> T:
        client = self._client()
        try:
            return fn(client)
        except Exception as e:
            raise self._translate(what, e, not_found) from e

    def _translate(
        self, what: str, e: Exception, not_found: Callable[[str], RegistryError] | None = None
    ) -> RegistryError:
        from mlflow.exceptions import MlflowException

        if isinstance(e, MlflowException):
            if not_found is not None and e.error_code in _NOT_FOUND and "not found" in str(e).lower():
                return not_found(str(e))
            if "API request to" not in str(e):  # MLflow's wording when the HTTP server does not answer
                return RegistryError(f"{what} in {self.uri} failed: {e}")
        # Anything else (connection refused, a locked or unreadable database file) means no registry.
        return RegistryUnreachable(
            f"{what}: the registry {self.uri} cannot be reached ({type(e).__name__}: {e}); start the tracking "
            f"server or fix MLFLOW_TRACKING_URI"
        )
