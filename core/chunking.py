"""Which chunking the pipeline uses: the one stage `select_chunking` measured best (evaluation/select_chunking.py).

Params `data.chunk` are the defaults and `data.chunking.grid` the candidates laid over them; the winner is
written to `artifacts/metrics/chunking.json`, and the chunk stage, evaluation and the registered retrieval
unit all read it from there, so nothing can chunk one way and score another.
"""

from __future__ import annotations

import json

from core import paths
from core.config import ChunkParams, Params


class ChunkingNotChosen(FileNotFoundError):
    pass


def chosen_chunking(p: Params) -> ChunkParams:
    """The chosen chunking, with today's `data.chunk` defaults under it.

    Raises:
        ChunkingNotChosen: the select_chunking stage has not run, or chose a chunking that is no longer a candidate.
    """
    if not paths.CHUNKING.exists():
        raise ChunkingNotChosen(f"{paths.CHUNKING} does not exist: run `dvc repro select_chunking` first")
    chosen = ChunkParams.model_validate(json.loads(paths.CHUNKING.read_text())["chunk"])
    if chosen not in p.data.chunking.candidates(p.data.chunk):
        raise ChunkingNotChosen(
            f"{paths.CHUNKING} chose {chosen.name}, which params data.chunk / data.chunking.grid no longer offer: "
            "run `dvc repro select_chunking`"
        )
    return chosen
