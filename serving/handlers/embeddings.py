"""/v1/embeddings: the champion embedder, micro-batched across requests."""

from __future__ import annotations

from core.errors import InvalidRequest, ModelNotFound
from serving.handlers.base import EMBEDDER, RequestRecord
from serving.platform import Platform
from serving.schemas import EmbeddingRequest, EmbeddingResponse


class EmbeddingsHandler:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def create(self, req: EmbeddingRequest, record: RequestRecord) -> EmbeddingResponse:
        """Embed the request's texts (checked before queueing).

        Raises:
            ModelNotFound: `model` is not `embedder`.
            InvalidRequest / PayloadTooLarge / ContextLengthExceeded / QueueFull: see EmbedderEngine.
        """
        if req.model != EMBEDDER:
            raise ModelNotFound(f"model `{req.model}` does not exist; use `embedder` (see /v1/models)", param="model")
        engine = self.platform.embedder
        if req.dimensions is not None and req.dimensions != engine.dimension:
            raise InvalidRequest(
                f"dimensions must be {engine.dimension} for this embedder (it cannot shorten its vectors)",
                param="dimensions",
            )
        texts = req.texts()
        counts = engine.check(texts)
        vectors = await engine.embed(texts)
        record.model, record.version = EMBEDDER, self.platform.embedder_info.version
        record.inputs, record.tokens = len(texts), sum(counts)
        return EmbeddingResponse.of(EMBEDDER, vectors, req.encoding_format, sum(counts))
