"""The `serving:` section of `params.yaml`: the server's knobs, validated like every section.

Part of `core.config.Params` (loaded and checked there), kept in its own module because it is the
largest section and only the server reads it. `serving/settings.py` applies `SERVING_<NAME>` overrides.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.sections import Section

Variant = Literal["float", "int8"]
"""A registered model's form: the trained float weights, or their int8 variant the pipeline made and gated."""

LOCAL_MODELS = ("chat", "rag", "embedder", "reranker")
"""The names the platform's own models are served under; an upstream may not take one."""


class UpstreamParams(Section):
    """A hosted model served under one of our names (`serving.upstreams`), through serving/handlers/upstream.py."""

    dialect: Literal["openai", "anthropic"]
    """The upstream's API: OpenAI's chat completions or Anthropic's Messages; either dialect is converted as needed."""
    base_url: str = Field(pattern=r"^https?://")
    """As its own SDK takes it: `https://api.openai.com/v1` (OpenAI-compatible servers: their `/v1` URL), or
    `https://api.anthropic.com` (the SDK adds `/v1/messages`)."""
    model: str = Field(min_length=1)
    """The model's name upstream (e.g. `gpt-4o-mini`, `claude-sonnet-4-5`)."""
    api_key_env: str | None = None
    """The environment variable holding the upstream's key, read at start-up and never logged (None: no key)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Connect-and-read timeout of one upstream request."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries of a failed connection, 429 or 5xx before the request fails (the SDKs' backoff)."""


class ServingParams(Section):
    """Serving knobs (`bentoml serve`); every one can be overridden by `SERVING_<NAME>` (serving/settings.py)."""

    chat_alias: str = "champion"
    """Registry alias served for `models.chat_name` (e.g. `challenger` to try a candidate)."""
    chat_variant: Variant = "float"
    """`int8` serves `models.chat_int8_name` at `chat_alias` instead: the int8 form of the float version that the
    pipeline gated (stage `quantize_chat`; ~2-2.7x the float model's one-stream tokens/s on this CPU, CPU only).
    `float` is the exact path (greedy answers equal `generate`) and the one a GPU runs."""
    embedder_backend: Literal["auto", "torch", "onnx"] = "auto"
    """What runs the served embedder. `onnx`: its fp32 ONNX export on ONNX Runtime (core/onnx_embedder.py: the same
    vectors, so the same index and hits; 2.9x the one-client embeddings and 1.19x at 64 clients on this CPU;
    exported once per version into the model cache; CPU only). `torch`: sentence-transformers, the path the pipeline
    embeds and indexes with. `auto`: `onnx` on a CPU, `torch` on a GPU."""
    embedder_variant: Variant = "float"
    """`int8` serves the int8 ONNX form of the embedder the retrieval unit names (`models.embedder_int8_name`, stage
    `quantize_embedder`, gated on held-out retrieval) and searches the collection built with it, which `index.variants`
    must list: int8 vectors are never compared with float ones. 1.44x fp32 ONNX Runtime's in-process throughput here
    (853 against 594 short texts/s, `python -m benchmarks.peers --only limits`), the same at 64 HTTP clients; CPU only.
    `float`: the registered embedder itself (on `embedder_backend`)."""
    embedder_alias: str = "champion"
    """Registry alias of `models.embedder_name` that the benchmarks load. The server embeds with the version its
    retrieval unit names instead (usually this one; the base model or the naive recipe's when they measured best)."""
    retrieval_alias: str = "champion"
    """Registry alias served for `models.retrieval_name`: the embedder version, chunks, search mode and lexical
    index, as one unit; the active Chroma index must have been built from it (`dvc repro index`)."""
    rollout_poll_s: float = Field(default=30.0, ge=0)
    """Seconds between checks of `chat_alias` and `retrieval_alias` in the registry; when one has moved, the new
    versions are loaded and warmed beside the running ones and new requests switch to them (serving/rollout.py).
    0: off."""
    cache_dir: str = "state/serving-cache"
    """Downloaded model versions, one folder per name/version, so a restart works without the registry."""
    chat_max_batch_size: int = Field(default=16, ge=1, le=256)
    """Sequences decoded together per step (continuous batching slots)."""
    chat_prefill_chunk_tokens: int = Field(default=512, ge=0)
    """While other requests are decoding, a new prompt is prefilled in chunks of about this many tokens (padding
    included), one chunk per decode step, so their next token waits for a chunk, not a whole prompt (vLLM's chunked
    prefill). 0: whole prompts in one forward. With nothing decoding, a prompt runs whole either way."""
    chat_decode_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads during decode steps only (prefills keep `torch_threads`). None: 1 for the int8 chat
    variant, whose small decode steps lose more waiting for a preempted second thread than they gain from it, and
    the prefills' count for float (`serving.settings.decode_threads` has the measurements)."""
    chat_prefix_cache_tokens: int = Field(default=4096, ge=0)
    """Prompt beginnings that requests share (system prompt, tools, RAG instructions) keep their KV cache for the next
    prefills, up to this many tokens in all (46 KB each for SmolLM2-135M fp32); 0: off."""
    chat_max_queue: int = Field(default=64, ge=0)
    """Requests waiting for a slot; beyond this a request gets 429 with Retry-After."""
    chat_max_context_tokens: int = Field(default=2048, ge=64)
    """Cap on prompt + max_tokens (the model's own window is the other cap); KV memory grows with it."""
    chat_max_tokens: int = Field(default=512, ge=1)
    """Largest `max_tokens` a request may ask for."""
    chat_default_max_tokens: int = Field(default=256, ge=1)
    """`max_tokens` when the request gives none."""
    messages_temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    """`/v1/messages` when the request sends no `temperature` (today's `anthropic` SDK never does; older ones do)."""
    messages_top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """`/v1/messages` when the request sends no `top_p`."""
    embed_max_batch_size: int = Field(default=32, ge=1)
    """Texts per embedder forward pass (micro-batching across requests)."""
    embed_max_wait_ms: float = Field(default=5.0, ge=0)
    """How long the first text of a batch waits for company once the previous pass had some (a lone client
    never waits); a wait window, never a shedding deadline."""
    embed_max_queue: int = Field(default=4096, ge=1)
    """Texts waiting to be embedded; beyond this a request gets 429 with Retry-After."""
    embed_max_inputs: int = Field(default=256, ge=1)
    """Texts per embeddings request; more is 413."""
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    """Request bodies over this are 413."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """Per-request deadline (queue + work); past it the request gets 504 and frees its slot."""
    retry_after_s: int = Field(default=1, ge=1)
    """`Retry-After` sent with 429/503."""
    rag_context_tokens: int = Field(default=1024, ge=32)
    """Token budget for the numbered sources of a RAG prompt (core/context.py)."""
    rag_neighbour_window: int = Field(default=1, ge=0)
    """Hits from one document at most this many chunk positions apart are merged into one source (0: never)."""
    rerank_max_documents: int = Field(default=256, ge=1)
    """Documents one /v1/rerank request may carry (each is one cross-encoder forward)."""
    reranker_variant: Variant = "float"
    """`int8` reranks with the int8 ONNX form of the reranker the retrieval unit names (`models.reranker_int8_name`,
    stage `quantize_reranker`, gated on reranked held-out retrieval); CPU only. About 1.4-1.6x the float reranker here
    (core/onnx_reranker.py). Nothing changes when the unit does not rerank."""
    rerank_batch_size: int = Field(default=2, ge=1)
    """Pairs per reranker forward. Pairs are sorted by length first, so small batches carry little padding: ten
    hybrid candidates took 519 ms p50 at 2 against 567 ms in one batch of 32 (core/onnx_reranker.py). Raise it
    on a GPU, where wide batches are what is fast."""
    rag_top_k: int = Field(default=4, ge=1)
    """Passages given to the chat model when a RAG request names no top_k."""
    max_top_k: int = Field(default=50, ge=1)
    api_keys: tuple[str, ...] = ()
    """Bearer keys accepted (empty: no auth). Prefer the `SERVING_API_KEYS` env var (comma-separated) to the file."""
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    """Requests per minute per API key (per client address without auth); None: unlimited."""
    log_text: bool = False
    """Log prompt and answer text with each request (off: sizes only)."""
    torch_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads in the server (None: torch's default)."""
    resources_gpu: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    """GPUs claimed in `@bentoml.service(resources=...)`: `auto` claims 1 where a CUDA GPU is visible and none
    elsewhere (the models then run on the CPU); an integer forces it, e.g. 1 when building a bento on a CPU
    machine for a GPU cluster."""
    resources_gpu_type: str | None = None
    """GPU type for BentoCloud/Kubernetes scheduling (e.g. `nvidia-l4`); only declared with a GPU."""
    resources_cpu: str | None = "2"
    """CPU cores requested (`resources.cpu`)."""
    resources_memory: str | None = "4Gi"
    """Memory requested (`resources.memory`): both models, their KV cache and the batch buffers."""
    upstreams: dict[str, UpstreamParams] = Field(default_factory=dict)
    """Hosted models served under these names beside ours (listed in /v1/models, same limits and metrics);
    `SERVING_UPSTREAMS` overrides them with a JSON object of the same shape."""

    @model_validator(mode="after")
    def _upstream_names_free(self) -> ServingParams:
        taken = sorted(set(self.upstreams) & set(LOCAL_MODELS))
        if taken:
            raise ValueError(f"upstreams may not take the platform's own model names: {', '.join(taken)}")
        return self

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> ServingParams:
        if self.chat_default_max_tokens > self.chat_max_tokens:
            raise ValueError(
                f"chat_default_max_tokens ({self.chat_default_max_tokens}) must be <= chat_max_tokens "
                f"({self.chat_max_tokens})"
            )
        return self
