"""The active-index pointer: readers only ever see a collection that was switched in when complete."""

from __future__ import annotations

from pathlib import Path

from core.config import IndexParams
from core.vectorstore import ActiveIndex, chroma_client, collection_name, prune, read_active, switch_active


def _client(tmp_path: Path):  # type: ignore[no-untyped-def]
    return chroma_client(IndexParams(chroma_path=str(tmp_path / "chroma")))


def _collection(client, name: str, n: int) -> None:  # type: ignore[no-untyped-def]
    coll = client.create_collection(name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    coll.add(
        ids=[f"c{i}" for i in range(n)],
        documents=[f"text {i}" for i in range(n)],
        embeddings=[[float(i == j) for j in range(4)] for i in range(n)],
    )


def test_no_pointer_means_no_index(tmp_path: Path) -> None:
    assert read_active(_client(tmp_path)) is None


def test_interrupted_build_leaves_previous_index_active(tmp_path: Path) -> None:
    client = _client(tmp_path)
    old = ActiveIndex(collection_name("chunks", "1", "a" * 32), "embedder", "1", "a" * 32, 3)
    _collection(client, old.collection, 3)
    switch_active(client, old)
    # a rebuild writes a new collection but dies before the switch
    _collection(client, collection_name("chunks", "2", "b" * 32), 2)
    assert read_active(client) == old
    # the pointer persists across clients (a restarted server reads the same)
    assert read_active(_client(tmp_path)) == old


def test_switch_moves_readers_to_the_new_collection(tmp_path: Path) -> None:
    client = _client(tmp_path)
    new = ActiveIndex(collection_name("chunks", "2", "b" * 32), "embedder", "2", "b" * 32, 2)
    _collection(client, new.collection, 2)
    switch_active(client, new)
    active = read_active(client)
    assert active == new
    assert client.get_collection(active.collection).count() == 2


def test_collection_names_are_valid_for_chroma() -> None:
    name = collection_name("chunks", "12", "0123456789abcdef" * 2)
    assert name == "chunks-v12-0123456789ab"
    assert 3 <= len(name) <= 512


def test_prune_keeps_the_newest_builds_and_the_active_one(tmp_path: Path) -> None:
    client = _client(tmp_path)
    # built in this order; names sort differently from build order on purpose (v10 < v9 as strings)
    for built_at, version in enumerate(["8", "9", "10", "11"]):
        name = collection_name("chunks", version, "c" * 32)
        client.create_collection(name, embedding_function=None, metadata={"built_at": float(built_at)})
    active = collection_name("chunks", "11", "c" * 32)
    deleted = prune(client, "chunks", keep=2, active=active)
    assert sorted(deleted) == sorted([collection_name("chunks", v, "c" * 32) for v in ("8", "9")])
    assert {c.name for c in client.list_collections()} == {active, collection_name("chunks", "10", "c" * 32)}


def test_each_variant_has_its_own_pointer_and_pruning(tmp_path: Path) -> None:
    """The int8 embedder's collections and pointer live beside the float ones: switching or pruning one variant never
    touches the other's (a float query must never meet int8 vectors, nor lose its collection to their builds)."""
    client = _client(tmp_path)
    floating = ActiveIndex(collection_name("chunks", "3", "d" * 32), "embedder", "3", "d" * 32, 2)
    int8 = ActiveIndex(collection_name("chunks", "1", "d" * 32, "int8"), "embedder-int8", "1", "d" * 32, 2)
    assert int8.collection == "chunks-int8-v1-dddddddddddd" != floating.collection
    for active in (floating, int8):
        _collection(client, active.collection, 2)
    switch_active(client, floating)
    assert read_active(client, "int8") is None
    switch_active(client, int8, "int8")
    assert (read_active(client), read_active(client, "int8")) == (floating, int8)
    for version in ("4", "5"):  # newer float builds
        _collection(client, collection_name("chunks", version, "d" * 32), 1)
    deleted = prune(client, "chunks", keep=1, active=floating.collection)
    assert int8.collection not in deleted and floating.collection not in deleted and len(deleted) == 2
    assert prune(client, "chunks", keep=1, active=int8.collection, variant="int8") == []
    assert {c.name for c in client.list_collections()} >= {floating.collection, int8.collection}
