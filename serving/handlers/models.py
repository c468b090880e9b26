"""/v1/models and /v1/status: what is served (registry versions, index) and whether it can serve."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Protocol

from serving.handlers.base import CHAT, EMBEDDER, RAG, RERANKER, RETRIEVAL
from serving.handlers.upstream import Upstreams
from serving.platform import Platform
from serving.schemas import EngineStatus, ModelCard, ModelList, ServedVersion, StatusResponse
from serving.schemas.status import RolloutStatus


class RolloutView(Protocol):
    def status(self) -> RolloutStatus: ...


class ModelsHandler:
    def __init__(
        self, platform: Platform, upstreams: Upstreams | None = None, rollout: RolloutView | None = None
    ) -> None:
        self.platform = platform
        self.upstreams = upstreams or Upstreams()
        self.rollout = rollout

    def list(self) -> ModelList:
        p, now = self.platform, int(time.time())
        chat_v, emb_v, ret_v = p.chat_info.version, p.embedder_info.version, p.retrieval_info.version
        return ModelList(
            data=[
                ModelCard(id=CHAT, created=now, version=chat_v),
                ModelCard(id=EMBEDDER, created=now, version=emb_v),
                ModelCard(id=RAG, created=now, version=f"chat:{chat_v},embedder:{emb_v},retrieval:{ret_v}"),
            ]
            + ([ModelCard(id=RERANKER, created=now, version=p.reranker_info.version)] if p.reranker_info else [])
            + [ModelCard(id=n, created=now, owned_by=f"upstream:{u.params.dialect}", version=u.params.model)
               for n, u in self.upstreams.items()]
        )  # fmt: skip

    def status(self) -> StatusResponse:
        """Readiness with its reason, each engine's health and load, and the versions being served.

        BentoML's /readyz carries only the boolean; this says why, for a person or an autoscaler.
        """
        p = self.platform
        engines = {}
        served: list[tuple[str, Any]] = [("chat", p.chat), ("embedder", p.embedder)]
        if p.reranker is not None:
            served.append(("reranker", p.reranker))
        for name, engine in served:
            health, load = engine.health(), engine.load()
            engines[name] = EngineStatus(
                healthy=health.healthy,
                reason=health.reason,
                running=load["running"],
                waiting=load["waiting"],
                limit=load["limit"],
            )
        if (prefixes := p.chat.prefix_stats()) is not None:
            engines["chat"].prefix_cache = asdict(prefixes)
        ready, reason = p.readiness()
        return StatusResponse(
            ready=ready,
            reason=reason,
            engines=engines,
            models={
                CHAT: ServedVersion.of(p.chat_info),
                EMBEDDER: ServedVersion.of(p.embedder_info),
                RETRIEVAL: ServedVersion.of(p.retrieval_info),
                **({RERANKER: ServedVersion.of(p.reranker_info)} if p.reranker_info else {}),
            },
            index=p.index_name,
            embedder_runtime=p.embedder.runtime,
            search_mode=p.retriever.default_mode,
            chunking=p.retriever.config.chunking_name,
            reranker=p.reranker is not None,
            reranker_runtime=p.reranker.runtime if p.reranker is not None else None,
            abstain_below=p.retriever.config.abstain_threshold,
            abstain_score=p.retriever.config.abstain_score,
            rollout=self.rollout.status() if self.rollout is not None else None,
        )
