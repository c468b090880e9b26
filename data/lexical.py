"""Stage `lexical`: the BM25 index over every chunk (core/lexical.py), beside the vector index.

Built from the same `chunks.parquet` as the Chroma collection, so the two rank the same chunk ids;
the register stage logs it into the `retrieval` model, and the server loads it from the registry.
"""

from __future__ import annotations

import shutil

import polars as pl

from core import paths
from core.config import params
from core.io import write_json
from core.lexical import LexicalIndex
from core.log import get_logger
from core.tracking import file_md5

log = get_logger(__name__)


def main() -> None:
    p = params()
    chunks = pl.read_parquet(paths.CHUNKS, columns=["chunk_id", "text"])
    index = LexicalIndex.build(chunks["chunk_id"].to_list(), chunks["text"].to_list(), p.retrieval.stemmer)
    # written whole into a fresh folder, then moved into place: never half an index under the DVC out
    tmp = paths.LEXICAL_INDEX.with_name(paths.LEXICAL_INDEX.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    index.save(tmp)
    write_json(
        {"chunks": len(index), "chunks_md5": file_md5(paths.CHUNKS), "stemmer": index.stemmer}, tmp / "manifest.json"
    )
    shutil.rmtree(paths.LEXICAL_INDEX, ignore_errors=True)
    tmp.rename(paths.LEXICAL_INDEX)
    log.info("lexical index: %d chunks -> %s", len(index), paths.LEXICAL_INDEX)


if __name__ == "__main__":
    main()
