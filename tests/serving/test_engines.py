"""Engines without HTTP, on the real base models (artifacts/base): batching must not change answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path

import chromadb
import numpy as np
import pytest
import torch
from chromadb.config import Settings

from core import paths
from core.errors import ContextLengthExceeded, InvalidRequest, Overloaded, QueueFull, RequestTimeout
from core.loading import load_chat, load_embedder
from serving.engines.chat import ChatEngine
from serving.engines.embedder import EmbedderEngine
from serving.engines.rag import RagService
from serving.engines.retriever import Retriever
from serving.engines.types import SamplingParams


@pytest.fixture(scope="module")
def base_dir(request: pytest.FixtureRequest) -> Path:
    """The base models: this checkout's artifacts/base when the pipeline ran here, else the tiny pipeline copy's."""
    if (paths.BASE_CHAT / "model.safetensors").exists() and (paths.BASE_EMBEDDER / "modules.json").exists():
        return paths.BASE_CHAT.parent
    return Path(request.getfixturevalue("pipeline")) / "artifacts" / "base"


QUESTIONS = [
    "What is Python?",
    "Name three colours of the rainbow and say which one you like best.",
    "Hi",
    "Explain what a list comprehension does, in one sentence.",
]


@pytest.fixture(scope="module")
def chat_parts(base_dir: Path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return load_chat(base_dir / "chat", device="cpu")


@pytest.fixture
def engine(chat_parts) -> Iterator[ChatEngine]:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=3, max_queue=2, max_context_tokens=256, timeout_s=60)
    eng.start()
    yield eng
    eng.stop()


def _reference(chat_parts, prompt: list[int], max_new: int) -> str:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, len(prompt) :], skip_special_tokens=True)


def test_continuous_batching_matches_one_stream_generate(engine: ChatEngine, chat_parts) -> None:  # type: ignore[no-untyped-def]
    """Four requests on three slots, arriving at different times: each answer equals solo greedy `generate`."""
    prompts = [engine.encode_messages([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=12, temperature=0)

    async def run() -> list[str]:
        async def one(i: int) -> str:
            await asyncio.sleep(0.3 * i)  # later requests join a running batch mid-generation
            return (await engine.submit(prompts[i], params).result()).text

        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    got = asyncio.run(run())
    want = [_reference(chat_parts, p, 12) for p in prompts]
    assert got == want


def test_stream_usage_and_finish_reason(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "Count from one to twenty."}])

    async def run():  # type: ignore[no-untyped-def]
        return [d async for d in engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0)).stream()]

    deltas = asyncio.run(run())
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].prompt_tokens == len(prompt)


def test_stop_string_cuts_the_answer(engine: ChatEngine, chat_parts) -> None:  # type: ignore[no-untyped-def]
    prompt = engine.encode_messages([{"role": "user", "content": QUESTIONS[0]}])
    full = _reference(chat_parts, prompt, 12)
    stop = full.split()[2]  # a word that appears in the greedy answer

    async def run():  # type: ignore[no-untyped-def]
        return await engine.submit(prompt, SamplingParams(max_tokens=12, temperature=0, stop=(stop,))).result()

    res = asyncio.run(run())
    assert res.finish_reason == "stop"
    assert res.text == full[: full.index(stop)]


def test_seeded_sampling_is_reproducible(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "Tell me a story."}])
    p = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, seed=7)

    async def two() -> list[str]:
        return [(await engine.submit(prompt, p).result()).text for _ in range(2)]

    a, b = asyncio.run(two())
    assert a == b


def test_context_length_checked_before_any_work(engine: ChatEngine) -> None:
    async def run() -> None:
        engine.submit(list(range(200)), SamplingParams(max_tokens=100))

    with pytest.raises(ContextLengthExceeded, match="context window is 256 tokens"):
        asyncio.run(run())
    with pytest.raises(InvalidRequest):
        asyncio.run(_submit_empty(engine))
    assert engine.load()["running"] == 0 and engine.load()["waiting"] == 0


async def _submit_empty(engine: ChatEngine) -> None:
    engine.submit([], SamplingParams(max_tokens=1))


def test_disconnect_frees_the_slot(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "Write a long essay about the sea."}])

    async def run() -> dict[str, int]:
        async def consume() -> None:
            async for _ in engine.submit(prompt, SamplingParams(max_tokens=200, temperature=0)).stream():
                pass

        task = asyncio.create_task(consume())
        while engine.load()["running"] == 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()  # what BentoML/Starlette do when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if engine.load()["running"] == 0:
                break
            await asyncio.sleep(0.05)
        return engine.load()

    assert asyncio.run(run()) == {"running": 0, "waiting": 0, "limit": engine.max_batch_size}


def test_bounded_queue_and_timeout(chat_parts) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=1, max_queue=1, max_context_tokens=256, timeout_s=1.0)
    eng.start()
    prompt = eng.encode_messages([{"role": "user", "content": "Write a long essay about the sea."}])

    async def run() -> None:
        first = eng.submit(prompt, SamplingParams(max_tokens=200, temperature=0))
        eng.submit(prompt, SamplingParams(max_tokens=1))  # waits (slot taken after admission, or queued)
        with pytest.raises(QueueFull) as full:
            for _ in range(3):
                eng.submit(prompt, SamplingParams(max_tokens=1))
        assert full.value.retry_after_s == 1
        with pytest.raises(RequestTimeout):
            await first.result()

    try:
        asyncio.run(run())
    finally:
        eng.stop()


# ---- embedder, retriever, RAG ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(base_dir: Path) -> EmbedderEngine:
    return EmbedderEngine(load_embedder(base_dir / "embedder", device="cpu"), max_batch_size=8, max_wait_ms=5)


def test_embeddings_are_normalised_and_match_direct_encode(embedder: EmbedderEngine) -> None:
    texts = ["json.dumps serialises an object", "open a file for reading", "x"]

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(embedder.embed([t]) for t in texts), embedder.embed(texts))

    *singles, together = asyncio.run(run())
    direct = embedder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(np.concatenate(singles), direct, atol=1e-5)
    assert np.allclose(together, direct, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_retriever_and_rag(tmp_path, embedder: EmbedderEngine, engine: ChatEngine) -> None:  # type: ignore[no-untyped-def]
    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    coll = client.create_collection("chunks-test", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    docs = {
        "a": ("json.dumps converts a Python object to a JSON string.", "library/json.md"),
        "b": ("The with statement opens a file and closes it afterwards.", "reference/compound.md"),
        "c": ("Lists are mutable sequences.", "library/stdtypes.md"),
    }
    coll.add(
        ids=list(docs),
        documents=[d for d, _ in docs.values()],
        embeddings=embedder.embed_sync([d for d, _ in docs.values()]),
        metadatas=[{"source": s} for _, s in docs.values()],
    )
    retriever = Retriever(embedder, coll, max_top_k=5)

    async def run():  # type: ignore[no-untyped-def]
        hits = await retriever.search("How do I turn an object into JSON?", top_k=2)
        filtered = await retriever.search("JSON", top_k=3, where={"source": "library/stdtypes.md"})
        rag = await RagService(retriever, engine, default_top_k=2).start(
            "How do I turn an object into JSON?", SamplingParams(max_tokens=8, temperature=0)
        )
        return hits, filtered, rag.sources, await rag.generation.result()

    hits, filtered, sources, answer = asyncio.run(run())
    assert hits[0].id == "a" and hits[0].source == "library/json.md" and hits[0].score > hits[1].score
    assert [h.id for h in filtered] == ["c"]
    assert [s.id for s in sources] == [h.id for h in hits]
    assert answer.completion_tokens > 0
    with pytest.raises(InvalidRequest, match="top_k"):
        asyncio.run(retriever.search("x", top_k=99))
    with pytest.raises(InvalidRequest, match="filter"):
        asyncio.run(retriever.search("x", top_k=1, where={"$bogus": 1}))


class _InjectedOom:
    """Fault injection for a GPU path the CPU cannot show: the real model's forward raises the error
    CUDA raises when a batch needs more memory than the device has (here: more than `rows` rows)."""

    def __init__(self, module: torch.nn.Module, rows: int) -> None:
        self.rows, self.raised = rows, 0
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:  # type: ignore[type-arg]
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], Mapping):  # sentence-transformers' features
            ids = args[0].get("input_ids")
        if ids is not None and ids.shape[0] > self.rows:
            self.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {ids.shape[0]} rows > {self.rows})")

    def remove(self) -> None:
        self._handle.remove()


def test_out_of_memory_requeues_and_retries_with_a_smaller_batch(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """A step that runs out of memory loses nothing: its requests are requeued under a halved slot limit
    and resume where they were, so every greedy answer still equals solo `generate`."""
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=4, max_queue=8, max_context_tokens=256, timeout_s=120)
    prompts = [eng.encode_messages([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=10, temperature=0)
    oom = _InjectedOom(model, rows=2)
    eng.start()
    try:

        async def run() -> list[str]:
            handles = [eng.submit(p, params) for p in prompts]
            return [(await h.result()).text for h in handles]

        got = asyncio.run(run())
        limit = eng.limit
    finally:
        oom.remove()
        eng.stop()
    assert oom.raised > 0 and limit <= 2
    assert got == [_reference(chat_parts, p, 10) for p in prompts]


def test_out_of_memory_on_one_request_is_a_503_and_the_engine_lives(chat_parts) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=2, max_queue=2, max_context_tokens=256, timeout_s=60)
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    params = SamplingParams(max_tokens=4, temperature=0)

    async def answer() -> str:
        return (await eng.submit(prompt, params).result()).text

    eng.start()
    oom = _InjectedOom(model, rows=0)
    try:
        with pytest.raises(Overloaded, match="out of memory"):
            asyncio.run(answer())
        oom.remove()
        assert asyncio.run(answer()) == _reference(chat_parts, prompt, 4)
    finally:
        oom.remove()
        eng.stop()


def test_embedder_splits_a_batch_that_runs_out_of_memory(embedder: EmbedderEngine) -> None:
    engine = EmbedderEngine(embedder.model, max_batch_size=8, max_wait_ms=5)  # its own cap, shrunk below
    texts = [f"text number {i} about python" for i in range(6)]
    direct = engine.model.encode(texts, normalize_embeddings=True)
    oom = _InjectedOom(engine.model[0], rows=2)
    try:
        got = asyncio.run(engine.embed(texts))
        oom.rows = 0
        with pytest.raises(Overloaded, match="out of memory"):
            asyncio.run(engine.embed(["one text"]))
    finally:
        oom.remove()
    assert oom.raised > 0 and engine.backoff.value <= 2
    assert np.allclose(got, direct, atol=1e-5)
