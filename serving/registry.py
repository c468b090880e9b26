"""Model layer: resolve registry aliases to versions, cache their artifacts by version, load them.

    resolve   `models:/<name>@<alias>` -> version (core.registry, the one module that calls MLflow's registry)
    cache     download that version once into `<cache_dir>/<name>/<version>/` (complete marker last)
    verify    the active Chroma collection (of `serving.embedder_variant`) was built by the embedder version
              `retrieval@alias` names in that form (the one served), from the chunks the retrieval unit carries
    load      core.loading (the same functions evaluation uses), from the cached folder, on `settings.device`;
              the embedder then on the runtime `serving.embedder_backend` picks (`serve_embedder`)

If the registry cannot be reached (or no longer knows the alias), start-up falls back to the version
this alias resolved to last time, else the newest cached version, and says so in the log.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from chromadb.api.models.Collection import Collection
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from core.device import pick_device, return_freed_memory
from core.errors import RegistryError, StartupError
from core.lexical import LexicalIndex
from core.loading import load_chat, load_embedder, load_reranker
from core.log import get_logger
from core.onnx_embedder import OnnxEmbedder, export_fp32, find_onnx_folder, is_onnx_folder, supported
from core.onnx_reranker import OnnxReranker
from core.onnx_reranker import find_folder as find_reranker_folder
from core.registry import Registry
from core.retrieval_unit import RetrievalConfig, read_unit
from core.serving_params import Variant
from core.vectorstore import ActiveIndex, chroma_client, read_active
from serving.settings import Settings

log = get_logger(__name__)
_MARKER = "_complete.json"
ONNX_DIR = "onnx-fp32"
"""The served embedder's ONNX export, inside its cached version folder."""


@dataclass(frozen=True)
class ServedModel:
    """Which registry version is being served, and where its files are."""

    name: str
    alias: str
    version: str
    path: Path
    from_cache_only: bool
    """True when the registry could not be reached and the cache supplied the version."""

    def uri(self) -> str:
        """The cached folder as a `file://` URI (core.loading takes it, or the path itself)."""
        return self.path.resolve().as_uri()


def _download(registry: Registry, name: str, version: str, dest: Path) -> None:
    """Download into a fresh partial folder and rename it into place, so the cache never holds half a model."""
    tmp = dest.with_name(dest.name + f".partial-{int(time.time())}")
    shutil.rmtree(tmp, ignore_errors=True)
    registry.download(name, version, tmp)
    (tmp / _MARKER).write_text(json.dumps({"name": name, "version": version, "downloaded_at": time.time()}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _cached_versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    done = [p.name for p in root.iterdir() if (p / _MARKER).exists()]
    return sorted(done, key=lambda v: (len(v), v))  # registry versions are integers as strings


def fetch(name: str, alias: str, settings: Settings, version: str | None = None) -> ServedModel:
    """Resolve `name@alias` (or take `version` as given) and make sure that version is in the local cache.

    Raises:
        StartupError: neither the registry nor the cache can supply a version.
    """
    root = settings.cache_root() / name
    pointer = root / f"alias-{alias}.json"
    registry = Registry(settings.tracking_uri)
    if version is not None:
        if (root / version / _MARKER).exists():
            log.info("%s version %s found in the cache %s", name, version, root / version)
            return ServedModel(name, alias, version, root / version, False)
        try:
            _download(registry, name, version, root / version)
        except RegistryError as e:
            raise StartupError(f"cannot cache {name} version {version} into {root / version}: {e}") from e
        return ServedModel(name, alias, version, root / version, False)
    try:
        version = registry.resolve(name, alias)
    except RegistryError as e:
        cached = _cached_versions(root)
        last = json.loads(pointer.read_text())["version"] if pointer.exists() else None
        version_from_cache = last if last in cached else (cached[-1] if cached else None)
        if version_from_cache is None:
            raise StartupError(f"{e}; and no cached version under {root}: run the pipeline (`dvc repro`)") from None
        how = "the version this alias had last time" if version_from_cache == last else "the newest cached version"
        log.warning(
            "registry unreachable; serving %s version %s from the cache (%s) reason=%r",
            name,
            version_from_cache,
            how,
            str(e),
        )
        return ServedModel(name, alias, version_from_cache, root / version_from_cache, True)
    dest = root / version
    if not (dest / _MARKER).exists():
        log.info("downloading %s version %s into %s", name, version, dest)
        try:
            _download(registry, name, version, dest)
        except RegistryError as e:
            raise StartupError(f"cannot cache {name} version {version} into {dest}: {e}") from e
    else:
        log.info("%s version %s found in the cache %s", name, version, dest)
    pointer.write_text(json.dumps({"version": version}))
    return ServedModel(name, alias, version, dest, False)


@dataclass
class LoadedModels:
    embedder_info: ServedModel
    chat_info: ServedModel
    embedder: object  # SentenceTransformer, or core.onnx_embedder.OnnxEmbedder (`serve_embedder`)
    chat_model: object  # PreTrainedModel
    tokenizer: object  # PreTrainedTokenizerBase
    index: ActiveIndex
    collection: Collection
    retrieval_info: ServedModel
    retrieval: RetrievalConfig
    lexical: LexicalIndex
    reranker_info: ServedModel | None = None
    reranker: CrossEncoder | OnnxReranker | None = None  # when the retrieval unit names one


def open_index(settings: Settings, embedder: ServedModel) -> tuple[ActiveIndex, Collection]:
    """The active Chroma collection of `serving.embedder_variant`, checked against the served embedder.

    Raises:
        StartupError: no active index of that variant, or it was built by another embedder name/version.
    """
    variant = settings.serving.embedder_variant
    client = chroma_client(settings.index)
    active = read_active(client, variant)
    where = settings.index.chroma_host or settings.index.chroma_dir()
    if active is None:
        if variant != "float":
            raise StartupError(
                f"no active {variant} Chroma index in {where}: list {variant} in index.variants and build it "
                "(`dvc repro index`)"
            )
        raise StartupError(f"no active Chroma index in {where}: run the pipeline (`dvc repro`) to build one")
    if (active.embedder_name, active.embedder_version) != (embedder.name, embedder.version):
        raise StartupError(
            f"the active Chroma collection {active.collection} was built by {active.embedder_name} version "
            f"{active.embedder_version}, but serving would embed queries with {embedder.name} version "
            f"{embedder.version} (models:/{embedder.name}@{embedder.alias}); rebuild the index (`dvc repro index`) "
            f"or serve the matching embedder version"
        )
    return active, client.get_collection(active.collection, embedding_function=None)


def read_retrieval(retrieval: ServedModel) -> tuple[RetrievalConfig, LexicalIndex]:
    """The retrieval unit's config and lexical index.

    Raises:
        StartupError: the unit is unreadable.
    """
    try:
        return read_unit(retrieval.path)
    except (OSError, ValueError) as e:
        raise StartupError(
            f"cannot read {retrieval.name} version {retrieval.version} from {retrieval.path}: {e}"
        ) from e


def unit_embedder(retrieval: ServedModel, config: RetrievalConfig, variant: Variant) -> tuple[str, str]:
    """The registered (name, version) the unit embeds with in `variant` (`serving.embedder_variant`).

    Raises:
        StartupError: the unit names no such form (no int8 form passed its gate for the embedder it searches with).
    """
    named = config.embedder(variant)
    if named is None:
        raise StartupError(
            f"{retrieval.name} version {retrieval.version} names no {variant} form of {config.embedder_name} version "
            f"{config.embedder_version} (its gate refused it, or the unit searches with another embedder than the "
            "run's fine-tuned candidate: artifacts/reports/register.json says which): serve serving.embedder_variant: "
            "float"
        )
    return named


def check_retrieval(
    retrieval: ServedModel,
    config: RetrievalConfig,
    embedder: ServedModel,
    index: ActiveIndex,
    variant: Variant = "float",
) -> None:
    """The unit names the served embedder version (in `variant`), and the active index holds the unit's chunks.

    Raises:
        StartupError: it names another embedder version or other chunks.
    """
    name, version = unit_embedder(retrieval, config, variant)
    if (name, version) != (embedder.name, embedder.version):
        raise StartupError(
            f"{retrieval.name} version {retrieval.version} (models:/{retrieval.name}@{retrieval.alias}) searches with "
            f"{name} version {version}, but serving would load {embedder.name} "
            f"version {embedder.version}; serve the embedder version the unit names"
        )
    if config.chunks_md5 != index.data_md5:
        raise StartupError(
            f"{retrieval.name} version {retrieval.version} indexes chunks {config.chunks_md5[:12]} but the active "
            f"Chroma collection {index.collection} holds chunks {index.data_md5[:12]}: rebuild the index "
            "(`dvc repro index`)"
        )


def open_retrieval(
    retrieval: ServedModel, embedder: ServedModel, index: ActiveIndex
) -> tuple[RetrievalConfig, LexicalIndex]:
    """The retrieval unit's config and lexical index, checked against the served embedder and the index
    (`read_retrieval`, then `check_retrieval`)."""
    config, lexical = read_retrieval(retrieval)
    check_retrieval(retrieval, config, embedder, index)
    return config, lexical


def serve_embedder(
    info: ServedModel, backend: str, device: str, variant: Variant = "float"
) -> SentenceTransformer | OnnxEmbedder:
    """Load the cached embedder version `info`. Its int8 form (`variant`) runs on ONNX Runtime as registered. A float
    one runs on the runtime `serving.embedder_backend` picks: sentence-transformers (`torch`), or its fp32 ONNX
    export on ONNX Runtime (`onnx`; `auto` on a CPU), exported once into the version's cache folder; once exported,
    a restart or a rollout opens the export without loading the torch model.

    Raises:
        StartupError: int8 or `onnx` asked for on a GPU; `onnx` for an embedder the export does not support, or where
            the cache cannot be written (`auto` serves torch in the last two cases, with a warning); an int8 version
            without its ONNX folder.
    """
    if variant == "int8":
        if device != "cpu":
            raise StartupError(
                f"serving.embedder_variant: int8 runs on the CPU (ONNX Runtime); this server runs on {device}: "
                "serve the float embedder"
            )
        try:
            return OnnxEmbedder(find_onnx_folder(info.path), threads=torch.get_num_threads())
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot open {info.name} version {info.version} from {info.path}: {e}") from e
    if backend == "onnx" and device != "cpu":
        raise StartupError(f"serving.embedder_backend: onnx runs on the CPU; this server runs on {device}: use auto")
    folder = info.path / ONNX_DIR
    if backend == "torch" or device != "cpu":
        return load_embedder(info.path, device=device)
    if is_onnx_folder(folder):
        return OnnxEmbedder(folder, threads=torch.get_num_threads())
    embedder = load_embedder(info.path, device=device)
    if reason := supported(embedder):
        if backend == "onnx":
            raise StartupError(f"serving.embedder_backend: onnx cannot run {info.name} v{info.version}: {reason}")
        log.warning("embedder %s v%s served by torch: %s", info.name, info.version, reason)
        return embedder
    started = time.perf_counter()
    try:
        export_fp32(embedder, folder)
    except OSError as e:
        if backend == "onnx":
            raise StartupError(f"cannot export {info.name} v{info.version} to ONNX into {folder}: {e}") from e
        log.warning("embedder %s v%s served by torch: cannot export to %s: %s", info.name, info.version, folder, e)
        return embedder
    log.info("exported %s v%s to ONNX in %.1fs: %s", info.name, info.version, time.perf_counter() - started, folder)
    return OnnxEmbedder(folder, threads=torch.get_num_threads())


def unit_reranker(
    retrieval_info: ServedModel, config: RetrievalConfig, variant: Variant, device: str
) -> tuple[str, str] | None:
    """The registered (name, version) that reranks in `variant` (`serving.reranker_variant`); None when the unit does
    not rerank (the variant then changes nothing).

    Raises:
        StartupError: int8 asked for on a GPU, or for a unit that names no int8 form.
    """
    if config.reranker() is None:
        return None
    named = config.reranker(variant)
    if named is None:
        raise StartupError(
            f"{retrieval_info.name} version {retrieval_info.version} names no {variant} form of {config.reranker_name} "
            f"version {config.reranker_version} (its gate refused it, or the unit was registered before int8 "
            "rerankers: artifacts/reports/register.json says which): serve serving.reranker_variant: float"
        )
    if variant == "int8" and device != "cpu":
        raise StartupError(
            f"serving.reranker_variant: int8 runs on the CPU (ONNX Runtime); this server runs on {device}: "
            "serve the float reranker"
        )
    return named


def serve_reranker(
    named: tuple[str, str] | None, settings: Settings, device: str
) -> tuple[ServedModel | None, CrossEncoder | OnnxReranker | None]:
    """The reranker version `unit_reranker` named, cached and loaded: the float cross-encoder, or its int8 form on ONNX
    Runtime as registered; (None, None) for none.

    Raises:
        StartupError: a version that cannot be cached or opened.
    """
    if named is None:
        return None, None
    name, version = named
    info = fetch(name, f"v{version}", settings, version)
    if settings.serving.reranker_variant == "float":
        return info, load_reranker(info.path, device=device)
    try:
        return info, OnnxReranker(find_reranker_folder(info.path), threads=torch.get_num_threads())
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot open {name} version {version} from {info.path}: {e}") from e


def load_models(settings: Settings) -> LoadedModels:
    """Resolve, cache, verify and load both models and the index (start-up only), on `settings.device`.

    Raises:
        StartupError: a model cannot be resolved or cached, or the index does not match the embedder.
    """
    retrieval_info = fetch(settings.retrieval_name, settings.serving.retrieval_alias, settings)
    retrieval, lexical = read_retrieval(retrieval_info)
    # The embedder is the version the retrieval unit was chosen with (the champion, the base model, or the naive
    # recipe's), not a second alias that could point elsewhere.
    # With `serving.embedder_variant: int8`, the int8 form of that version the unit names, over its own collection.
    variant = settings.serving.embedder_variant
    emb_name, emb_version = unit_embedder(retrieval_info, retrieval, variant)
    emb_info = fetch(emb_name, f"{settings.retrieval_name}@{settings.serving.retrieval_alias}", settings, emb_version)
    chat_info = fetch(settings.chat_name, settings.serving.chat_alias, settings)
    index, collection = open_index(settings, emb_info)  # fail fast, before loading weights
    check_retrieval(retrieval_info, retrieval, emb_info, index, variant)
    device = pick_device(settings.device)
    reranker_named = unit_reranker(retrieval_info, retrieval, settings.serving.reranker_variant, device)
    embedder = serve_embedder(emb_info, settings.serving.embedder_backend, device, variant)
    chat_model, tokenizer = load_chat(chat_info.path, device=device)
    reranker_info, reranker = serve_reranker(reranker_named, settings, device)
    return_freed_memory()  # what loading built and dropped (~50 MB after the int8 chat variant's load)
    log.info(
        "loaded embedder=%s (%s) chat=%s retrieval=%s mode=%s reranker=%s index=%s (%d chunks) device=%s",
        emb_info.version,
        getattr(embedder, "method", "torch"),
        chat_info.version,
        retrieval_info.version,
        retrieval.mode,
        f"{reranker_info.name} v{reranker_info.version}" if reranker_info else None,
        index.collection,
        index.count,
        device,
    )
    return LoadedModels(
        emb_info,
        chat_info,
        embedder,
        chat_model,
        tokenizer,
        index,
        collection,
        retrieval_info,
        retrieval,
        lexical,
        reranker_info,
        reranker,
    )
