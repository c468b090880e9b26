"""Stage `index`: embed the chunks of `retrieval@champion` with the embedder version it names into a new Chroma
collection, then switch.

Steps: resolve the retrieval unit -> its chunks and embedder version -> embed -> write new collection -> verify ->
switch pointer -> prune old. The unit (core/retrieval_unit.py) carries its chunks, so the collection is built
from exactly what the lexical index holds, whether that is the chosen chunking with the fine-tuned embedder or
the naive recipe. The collection name carries the embedder version and the chunks' md5, and its metadata records
both; serving refuses to start on a collection built by another embedder version or from other chunks.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from core import paths
from core.config import Params, params
from core.errors import RegistryError
from core.io import write_json
from core.loading import load_embedder
from core.log import get_logger
from core.retrieval_unit import UnitUnavailable, champion_unit
from core.vectorstore import ActiveIndex, chroma_client, collection_name, prune, read_active, switch_active

log = get_logger(__name__)


class IndexBuildError(RuntimeError):
    pass


def build_index(p: Params) -> ActiveIndex:
    """Build (or reuse, when identical) the collection for the retrieval champion's chunks and embedder version."""
    cfg = p.index
    with tempfile.TemporaryDirectory() as tmp:
        unit_version, unit, chunks = champion_unit(
            p.models.retrieval_name, p.models.champion_alias, Path(tmp) / "retrieval"
        )
    version, md5 = unit.embedder_version, unit.chunks_md5
    log.info(
        "retrieval version %s: embedder version %s, %d chunks (%s)",
        unit_version, version, chunks.height, unit.chunking.get("method", "tokens"),
    )  # fmt: skip
    name = collection_name(cfg.collection_prefix, version, md5)
    client = chroma_client(cfg)
    target = ActiveIndex(name, p.models.embedder_name, version, md5, chunks.height)

    current = read_active(client)
    if current == target:
        log.info("index %s is already active and complete; nothing to do", name)
        return current

    # A collection with this name that is not active is a leftover of an interrupted build: start over.
    if name in {c.name for c in client.list_collections()}:
        client.delete_collection(name)
    coll = client.create_collection(
        name,
        embedding_function=None,  # ours come from the champion; Chroma's default would download a model
        configuration={"hnsw": {"space": "cosine"}},
        metadata={
            "embedder_name": target.embedder_name,
            "embedder_version": version,
            "data_md5": md5,
            "state": "building",
            "built_at": time.time(),  # orders collections for pruning
        },
    )
    model = load_embedder(f"models:/{p.models.embedder_name}/{version}")
    # One encode call for all chunks: sentence-transformers sorts texts by length across the whole
    # call, so batches carry little padding (chunk lengths run from 8 to 200 tokens).
    embeddings = model.encode(
        chunks["text"].to_list(), batch_size=cfg.batch_size, normalize_embeddings=True, show_progress_bar=True
    )
    for i in tqdm(range(0, chunks.height, cfg.batch_size), desc=f"write {name}"):
        part = chunks.slice(i, cfg.batch_size)
        coll.add(
            ids=part["chunk_id"].to_list(),
            documents=part["text"].to_list(),
            embeddings=embeddings[i : i + cfg.batch_size],
            metadatas=part.select("doc_id", "source", "title", "heading", "position", "start", "end").to_dicts(),  # type: ignore[arg-type]
        )

    # verify before switching: every chunk is there, and a chunk finds itself first
    if coll.count() != chunks.height:
        raise IndexBuildError(f"collection {name} holds {coll.count()} chunks, expected {chunks.height}")
    probe = chunks.row(0, named=True)
    hit = coll.query(query_embeddings=model.encode([probe["text"]], normalize_embeddings=True), n_results=1)
    if hit["ids"][0][0] != probe["chunk_id"]:
        raise IndexBuildError(f"collection {name} failed self-retrieval for chunk {probe['chunk_id']}")
    coll.modify(metadata={**(coll.metadata or {}), "state": "complete"})

    switch_active(client, target)
    log.info("switched active index to %s (%d chunks)", name, chunks.height)
    for stale in prune(client, cfg.collection_prefix, keep=cfg.keep_collections, active=name):
        log.info("deleted old collection %s", stale)
    return target


def main() -> None:
    try:
        active = build_index(params())
    except (IndexBuildError, UnitUnavailable, RegistryError) as e:
        sys.exit(f"index: {e}")
    write_json(active.to_metadata(), paths.INDEX_MANIFEST)


if __name__ == "__main__":
    main()
