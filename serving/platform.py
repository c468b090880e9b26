"""The services layer assembled: engines over the loaded models, started and warmed once."""

from __future__ import annotations

from dataclasses import dataclass

from core.log import get_logger
from serving.engines.chat import ChatEngine
from serving.engines.embedder import EmbedderEngine
from serving.engines.rag import RagService
from serving.engines.retriever import Retriever
from serving.engines.types import EngineObserver
from serving.registry import LoadedModels, ServedModel
from serving.settings import Settings

log = get_logger(__name__)


@dataclass
class Platform:
    embedder: EmbedderEngine
    chat: ChatEngine
    retriever: Retriever
    rag: RagService
    embedder_info: ServedModel
    chat_info: ServedModel
    ready: bool = False

    @classmethod
    def build(cls, models: LoadedModels, settings: Settings, observer: EngineObserver | None = None) -> Platform:
        s = settings.serving
        embedder = EmbedderEngine(
            models.embedder,  # type: ignore[arg-type]
            max_batch_size=s.embed_max_batch_size,
            max_wait_ms=s.embed_max_wait_ms,
            max_queue=s.embed_max_queue,
            max_inputs=s.embed_max_inputs,
            retry_after_s=s.retry_after_s,
            observer=observer,
        )
        chat = ChatEngine(
            models.chat_model,  # type: ignore[arg-type]
            models.tokenizer,  # type: ignore[arg-type]
            max_batch_size=s.chat_max_batch_size,
            max_queue=s.chat_max_queue,
            max_context_tokens=s.chat_max_context_tokens,
            timeout_s=s.request_timeout_s,
            retry_after_s=s.retry_after_s,
            observer=observer,
        )
        retriever = Retriever(embedder, models.collection, max_top_k=s.max_top_k)
        rag = RagService(retriever, chat, default_top_k=s.rag_top_k)
        return cls(embedder, chat, retriever, rag, models.embedder_info, models.chat_info)

    def start(self) -> None:
        """Warm both models, then start the chat scheduler; ready only after both."""
        self.embedder.warmup()
        self.chat.warmup()
        self.chat.start()
        self.ready = True
        log.info("serving ready: embedder=%s chat=%s", self.embedder_info.version, self.chat_info.version)

    def is_ready(self) -> bool:
        return self.ready and self.chat.healthy

    def stop(self) -> None:
        self.ready = False
        self.chat.stop()
