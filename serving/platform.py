"""The services layer assembled: engines over the loaded models, started and warmed once."""

from __future__ import annotations

from dataclasses import dataclass

from core.log import get_logger
from serving.engines.chat import ChatEngine
from serving.engines.embedder import EmbedderEngine
from serving.engines.rag import RagService
from serving.engines.reranker import RerankerEngine
from serving.engines.retriever import Retriever
from serving.engines.types import EngineObserver
from serving.faults import StepDelay
from serving.registry import LoadedModels, ServedModel
from serving.settings import Settings, decode_threads

log = get_logger(__name__)


@dataclass
class Platform:
    embedder: EmbedderEngine
    chat: ChatEngine
    retriever: Retriever
    rag: RagService
    embedder_info: ServedModel
    chat_info: ServedModel
    retrieval_info: ServedModel
    index_name: str
    reranker: RerankerEngine | None = None
    reranker_info: ServedModel | None = None
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
            prefill_chunk_tokens=s.chat_prefill_chunk_tokens,
            decode_threads=decode_threads(s),
            prefix_cache_tokens=s.chat_prefix_cache_tokens,
            max_queue=s.chat_max_queue,
            max_context_tokens=s.chat_max_context_tokens,
            timeout_s=s.request_timeout_s,
            retry_after_s=s.retry_after_s,
            observer=observer,
        )
        reranker = (
            RerankerEngine(models.reranker, max_documents=s.rerank_max_documents, batch_size=s.rerank_batch_size)
            if models.reranker
            else None
        )
        retriever = Retriever(
            embedder, models.collection, models.lexical, models.retrieval, reranker=reranker, max_top_k=s.max_top_k
        )
        rag = RagService(
            retriever,
            chat,
            default_top_k=s.rag_top_k,
            context_tokens=s.rag_context_tokens,
            neighbour_window=s.rag_neighbour_window,
        )
        if settings.debug_step_delay_ms > 0:  # test-only: a deterministically slow model (serving/faults.py)
            StepDelay(models.chat_model, settings.debug_step_delay_ms / 1000)  # type: ignore[arg-type]
        return cls(
            embedder,
            chat,
            retriever,
            rag,
            models.embedder_info,
            models.chat_info,
            models.retrieval_info,
            models.index.collection,
            reranker,
            models.reranker_info,
        )

    def start(self) -> None:
        """Warm both models, then start the chat scheduler; ready only after both."""
        self.embedder.warmup()
        if self.reranker is not None:
            self.reranker.warmup()
        self.chat.warmup()
        self.chat.start()
        self.ready = True
        log.info(
            "serving ready: embedder=%s chat=%s retrieval=%s mode=%s",
            self.embedder_info.version,
            self.chat_info.version,
            self.retrieval_info.version,
            self.retriever.default_mode,
        )

    def readiness(self) -> tuple[bool, str | None]:
        """Ready once both models are loaded and warmed and while every engine is healthy; else why not."""
        if not self.ready:
            return False, "loading and warming the models"
        for name, engine in (("chat", self.chat), ("embedder", self.embedder)):
            health = engine.health()
            if not health.healthy:
                return False, f"{name} engine unhealthy: {health.reason}"
        return True, None

    def is_ready(self) -> bool:
        return self.readiness()[0]

    def is_alive(self) -> bool:
        """False once an engine is unhealthy: it does not recover by itself, so an orchestrator should
        restart the process (BentoML's /livez), not only stop routing to it (/readyz)."""
        return all(engine.health().healthy for engine in (self.chat, self.embedder))

    def busy(self) -> int:
        """Requests (chat) and texts (embedder) still running or queued: a retired platform waits for 0."""
        loads = [engine.load() for engine in (self.chat, self.embedder)]
        return sum(load["running"] + load["waiting"] for load in loads)

    def stop(self) -> None:
        self.ready = False
        self.chat.stop()
        self.embedder.close()
