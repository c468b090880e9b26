"""The vector index in Chroma: client creation, collection naming and the active-collection pointer.

Shared by the index stage (which writes) and serving (which reads). An index build writes a new
collection and only then moves the pointer, so readers never see a half-built index. The pointer
lives in Chroma itself (the metadata of a small `active-index` collection), so it works the same for
the embedded on-disk store and for a Chroma server.

Each embedder variant (`index.variants`: the float embedder, its int8 form) has its own collections and pointer
(`active-index`, `active-index-int8`): a query is only ever compared with vectors of the encoder that embeds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings

from core.config import IndexParams, Variant

POINTER = "active-index"


def pointer_name(variant: Variant = "float") -> str:
    """The pointer collection of `variant`'s index (the float one keeps the original name)."""
    return POINTER if variant == "float" else f"{POINTER}-{variant}"


def _stem(prefix: str, variant: Variant) -> str:
    """What every collection of `variant` is named after: `chunks-v` (float), `chunks-int8-v`."""
    return f"{prefix}-v" if variant == "float" else f"{prefix}-{variant}-v"


@dataclass(frozen=True)
class ActiveIndex:
    collection: str
    embedder_name: str
    embedder_version: str
    data_md5: str
    count: int

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


def chroma_client(cfg: IndexParams) -> ClientAPI:
    """A Chroma server client when `index.chroma_host` is set, else the embedded on-disk store."""
    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if cfg.chroma_host:
        return chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, settings=settings)
    cfg.chroma_dir().mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(cfg.chroma_dir()), settings=settings)


def collection_name(prefix: str, embedder_version: str, data_md5: str, variant: Variant = "float") -> str:
    # Chroma names: 3-512 chars of [a-zA-Z0-9._-]
    return f"{_stem(prefix, variant)}{embedder_version}-{data_md5[:12]}"


def read_active(client: ClientAPI, variant: Variant = "float") -> ActiveIndex | None:
    """The collection `variant`'s pointer names, or None when no index of it has been switched in yet."""
    try:
        meta = client.get_collection(pointer_name(variant)).metadata or {}
    except Exception:  # chromadb raises NotFoundError / ValueError depending on the backend
        return None
    if "collection" not in meta:
        return None
    return ActiveIndex(
        collection=str(meta["collection"]),
        embedder_name=str(meta["embedder_name"]),
        embedder_version=str(meta["embedder_version"]),
        data_md5=str(meta["data_md5"]),
        count=int(meta["count"]),
    )


def switch_active(client: ClientAPI, active: ActiveIndex, variant: Variant = "float") -> None:
    """Point `variant`'s readers at `active.collection` (one metadata write)."""
    pointer = client.get_or_create_collection(pointer_name(variant), embedding_function=None)
    pointer.modify(metadata=active.to_metadata())


def prune(client: ClientAPI, prefix: str, keep: int, active: str, variant: Variant = "float") -> list[str]:
    """Delete all but the `keep` most recently built collections of `variant` (named `prefix-v*` or
    `prefix-<variant>-v*`); never the active one, never another variant's.

    Returns:
        The names deleted.
    """
    stem = _stem(prefix, variant)
    ours = [c for c in client.list_collections() if c.name.startswith(stem) and c.name != active]
    ours.sort(key=lambda c: float((c.metadata or {}).get("built_at", 0.0)), reverse=True)  # newest first
    stale = [c.name for c in ours[max(keep - 1, 0) :]]
    for name in stale:
        client.delete_collection(name)
    return stale
