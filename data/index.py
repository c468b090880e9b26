"""Stage `index`: embed the chunks of `retrieval@champion` with the embedder version it names into a new Chroma
collection, then switch.

Steps: resolve the retrieval unit -> its chunks and embedder version -> embed -> write new collection -> verify ->
switch pointer -> prune old. The unit (core/retrieval_unit.py) carries its chunks, so the collection is built
from exactly what the lexical index holds, whether that is the chosen chunking with the fine-tuned embedder or
the naive recipe. The collection name carries the embedder version and the chunks' md5, and its metadata records
both; serving refuses to start on a collection built by another embedder version or from other chunks.

`index.variants` lists the embedder forms that get a collection: `float` (the registered embedder the unit names)
and `int8` (the int8 ONNX form the unit names, `serving.embedder_variant: int8`). Each has its own collections and
pointer, so int8 query vectors only ever meet int8 chunk vectors. A unit that names no int8 form gets no int8
collection (the manifest says why).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from chromadb.api import ClientAPI
from tqdm import tqdm

from core import paths
from core.config import Params, Variant, params
from core.errors import RegistryError
from core.io import write_json
from core.loading import load_embedder, load_onnx_embedder
from core.log import get_logger
from core.retrieval_unit import RetrievalConfig, UnitUnavailable, champion_unit
from core.vectorstore import ActiveIndex, chroma_client, collection_name, prune, read_active, switch_active

log = get_logger(__name__)


class IndexBuildError(RuntimeError):
    pass


def _encoder(name: str, version: str, variant: Variant) -> Any:
    """The registered embedder that embeds for `variant`: sentence-transformers (float), or the int8 ONNX form."""
    if variant == "int8":
        return load_onnx_embedder(f"models:/{name}/{version}")
    return load_embedder(f"models:/{name}/{version}")


def build_collection(p: Params, client: ClientAPI, unit: RetrievalConfig, chunks: pl.DataFrame,
                     variant: Variant) -> ActiveIndex:  # fmt: skip
    """Build (or reuse, when identical) `variant`'s collection of `chunks` with the unit's embedder in that form,
    then switch `variant`'s pointer to it.

    Raises:
        IndexBuildError: the built collection fails its checks.
    """
    cfg = p.index
    named = unit.embedder(variant)
    assert named is not None, "build_index builds only the variants the unit has"
    emb_name, version = named
    md5 = unit.chunks_md5
    name = collection_name(cfg.collection_prefix, version, md5, variant)
    target = ActiveIndex(name, emb_name, version, md5, chunks.height)

    current = read_active(client, variant)
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
            "embedder_name": emb_name,
            "embedder_version": version,
            "variant": variant,
            "data_md5": md5,
            "state": "building",
            "built_at": time.time(),  # orders collections for pruning
        },
    )
    model = _encoder(emb_name, version, variant)
    # One encode call for all chunks: sentence-transformers sorts texts by length across the whole
    # call, so batches carry little padding (chunk lengths run from 8 to 200 tokens); OnnxEmbedder does the same.
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

    switch_active(client, target, variant)
    log.info("switched active %s index to %s (%d chunks)", variant, name, chunks.height)
    for stale in prune(client, cfg.collection_prefix, keep=cfg.keep_collections, active=name, variant=variant):
        log.info("deleted old collection %s", stale)
    return target


def build_index(p: Params) -> dict[str, ActiveIndex | str]:
    """Every collection `index.variants` names, for the retrieval champion's chunks and embedder version, or why a
    variant has none (the unit names no such form of its embedder).

    Raises:
        IndexBuildError: no variant could be built, or one fails its checks.
    """
    with tempfile.TemporaryDirectory() as tmp:
        unit_version, unit, chunks = champion_unit(
            p.models.retrieval_name, p.models.champion_alias, Path(tmp) / "retrieval"
        )
    log.info(
        "retrieval version %s: embedder version %s (int8 form: %s), %d chunks (%s)",
        unit_version, unit.embedder_version, unit.embedder_int8_version, chunks.height,
        unit.chunking.get("method", "tokens"),
    )  # fmt: skip
    client = chroma_client(p.index)
    built: dict[str, ActiveIndex | str] = {}
    for variant in p.index.variants:
        if unit.embedder(variant) is None:
            # Not an error: the int8 gate may refuse, or the base model or the naive recipe may measure best on this
            # corpus. A server asked for this variant refuses to start and says why (serving/registry.py).
            built[variant] = (
                f"retrieval v{unit_version} names no {variant} form of embedder v{unit.embedder_version} "
                "(artifacts/reports/register.json says why)"
            )
            log.warning("index %s: skipped: %s", variant, built[variant])
            continue
        built[variant] = build_collection(p, client, unit, chunks, variant)
    if not any(isinstance(b, ActiveIndex) for b in built.values()):
        raise IndexBuildError(f"nothing to build: {'; '.join(str(b) for b in built.values())}")
    return built


def manifest(built: dict[str, ActiveIndex | str]) -> dict[str, Any]:
    """The stage's output: the first variant's collection at the top (the float one by default), then each variant's
    collection, or why it has none."""
    first = next(b for b in built.values() if isinstance(b, ActiveIndex))
    variants = {v: b.to_metadata() if isinstance(b, ActiveIndex) else {"skipped": b} for v, b in built.items()}
    return {**first.to_metadata(), "variants": variants}


def main() -> None:
    try:
        built = build_index(params())
    except (IndexBuildError, UnitUnavailable, RegistryError) as e:
        sys.exit(f"index: {e}")
    write_json(manifest(built), paths.INDEX_MANIFEST)


if __name__ == "__main__":
    main()
