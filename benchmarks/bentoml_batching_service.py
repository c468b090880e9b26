"""A minimal BentoML 1.4 service with BentoML's own adaptive batching, for comparison with our micro-batcher.

    bentoml serve benchmarks.bentoml_batching_service:EmbedBatching --port 3100     # from the repo root
    curl -s localhost:3100/encode -H 'content-type: application/json' -d '{"texts": ["one text"]}'

Not part of the platform: `python -m benchmarks.bentoml_batching` starts it and measures it with wrk.
It serves the same champion embedder as service.py (`models:/<embedder>@<alias>`, resolved and cached by
serving.registry), loaded with core.loading.load_embedder, with the same torch thread setting.

Environment:
    BATCH_MAX_SIZE         max_batch_size of the batchable API (default 32, like embed_max_batch_size)
    BATCH_MAX_LATENCY_MS   max_latency_ms (default 60000, BentoML's default): BentoML's dispatcher sheds
                           queued requests it predicts will miss it (503 "process is overloaded")
    BENTO_EMBEDDER_PATH    the champion's cached MLflow model folder (default: resolve the alias via
                           serving.registry.fetch, which also downloads it into the cache if missing)

One request carries one text: `{"texts": ["..."]}` is a batch of 1 along batch_dim 0, and the dispatcher
concatenates such lists across requests into one `encode` call.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
import torch

from serving.settings import load_settings

SETTINGS = load_settings()
MAX_BATCH_SIZE = int(os.environ.get("BATCH_MAX_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("BATCH_MAX_LATENCY_MS", "60000"))


def champion_path() -> Path:
    """The cached folder of the embedder version `serving.embedder_alias` points at."""
    if os.environ.get("BENTO_EMBEDDER_PATH"):
        return Path(os.environ["BENTO_EMBEDDER_PATH"])
    from serving.registry import fetch

    return fetch(SETTINGS.embedder_name, SETTINGS.serving.embedder_alias, SETTINGS).path


@bentoml.service(
    name="embed-batching-bench",
    workers=1,  # like service.py: one process, one model copy
    threads=1,  # one forward pass at a time, like our embedder's single-thread executor
    traffic={"timeout": int(SETTINGS.serving.request_timeout_s) + 30},
)
class EmbedBatching:
    def __init__(self) -> None:
        from core.loading import load_embedder

        if SETTINGS.serving.torch_threads:
            torch.set_num_threads(SETTINGS.serving.torch_threads)
        path = champion_path()
        self.model = load_embedder(path.resolve().as_uri())
        self.model.encode(["warm up"], normalize_embeddings=True)
        print(
            f"EmbedBatching: embedder {path} max_batch_size={MAX_BATCH_SIZE} max_latency_ms={MAX_LATENCY_MS} "
            f"torch_threads={torch.get_num_threads()}",
            flush=True,
        )

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised; n = texts across all requests in this batch."""
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

    @bentoml.api
    def encode_unbatched(self, texts: list[str]) -> np.ndarray:
        """The same model without the dispatcher: one request, one forward pass (a baseline)."""
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
