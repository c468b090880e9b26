"""Protocol handlers, one module per endpoint family: a validated request in, one services-layer call,
a response model (or an `EventStream` of events) out. Routes (service.py) call exactly one method;
the edge (serving/http.py) turns the result into JSON or SSE and exceptions into error bodies.
Handlers know the wire schemas and the engines' plain types, never BentoML, HTTP or model internals.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.handlers.chat import ChatHandler
from serving.handlers.completions import CompletionsHandler
from serving.handlers.embeddings import EmbeddingsHandler
from serving.handlers.messages import MessagesHandler
from serving.handlers.models import ModelsHandler, RolloutView
from serving.handlers.rag import RagHandler
from serving.handlers.retrieval import RetrievalHandler
from serving.handlers.upstream import Upstreams
from serving.platform import Platform
from serving.schemas import SamplingLimits
from serving.settings import Settings


@dataclass(frozen=True)
class Handlers:
    """Every endpoint family's handler over one running platform."""

    chat: ChatHandler
    embeddings: EmbeddingsHandler
    retrieval: RetrievalHandler
    rag: RagHandler
    models: ModelsHandler
    messages: MessagesHandler
    """Anthropic's Messages API, over the chat handler's engine path."""
    completions: CompletionsHandler
    """Legacy text completions, tokenize and detokenize."""

    @classmethod
    def build(cls, platform: Platform, settings: Settings, rollout: RolloutView | None = None) -> Handlers:
        limits = SamplingLimits.of(settings.serving)
        log_text = settings.serving.log_text
        rag = RagHandler(platform, limits)
        s = settings.serving
        upstreams = Upstreams.of(s.upstreams, settings.upstream_keys, s.chat_default_max_tokens)
        chat = ChatHandler(platform, limits, log_text, rag, upstreams)
        return cls(
            chat=chat,
            embeddings=EmbeddingsHandler(platform),
            retrieval=RetrievalHandler(platform),
            rag=rag,
            models=ModelsHandler(platform, upstreams, rollout),
            completions=CompletionsHandler(platform, limits),
            messages=MessagesHandler(
                platform, chat, settings.serving.messages_temperature, settings.serving.messages_top_p
            ),
        )
