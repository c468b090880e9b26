"""The vector index in Chroma: client creation, collection naming and the active-collection pointer.

Shared by the index stage (which writes) and serving (which reads). An index build writes a new
collection and only then moves the pointer, so readers never see a half-built index. The pointer
lives in Chroma itself (the metadata of a small `active-index` collection), so it works the same for
the embedded on-disk store and for a Chroma server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings

from core.config import IndexParams

POINTER = "active-index"


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


def collection_name(prefix: str, embedder_version: str, data_md5: str) -> str:
    # Chroma names: 3-512 chars of [a-zA-Z0-9._-]
    return f"{prefix}-v{embedder_version}-{data_md5[:12]}"


def read_active(client: ClientAPI) -> ActiveIndex | None:
    """The collection the pointer names, or None when no index has been switched in yet."""
    try:
        meta = client.get_collection(POINTER).metadata or {}
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


def switch_active(client: ClientAPI, active: ActiveIndex) -> None:
    """Point readers at `active.collection` (one metadata write)."""
    pointer = client.get_or_create_collection(POINTER, embedding_function=None)
    pointer.modify(metadata=active.to_metadata())


def prune(client: ClientAPI, prefix: str, keep: int, active: str) -> list[str]:
    """Delete all but the `keep` most recently built collections named `prefix-*`; never the active one.

    Returns:
        The names deleted.
    """
    ours = [c for c in client.list_collections() if c.name.startswith(prefix + "-") and c.name != active]
    ours.sort(key=lambda c: float((c.metadata or {}).get("built_at", 0.0)), reverse=True)  # newest first
    stale = [c.name for c in ours[max(keep - 1, 0) :]]
    for name in stale:
        client.delete_collection(name)
    return stale
