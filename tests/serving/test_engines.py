"""Engines without HTTP, on the real base models (artifacts/base): batching must not change answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
import torch
from chromadb.config import Settings

from core.errors import ContextLengthExceeded, InvalidRequest, Overloaded, QueueFull, RequestTimeout
from core.fusion import reciprocal_rank_fusion
from core.lexical import LexicalIndex
from core.loading import load_embedder, load_reranker
from core.retrieval_params import RetrievalParams
from core.retrieval_unit import RetrievalConfig
from serving.engines.chat import ChatEngine
from serving.engines.embedder import EmbedderEngine
from serving.engines.generation.forward import begin_prefill, finish_prefill, prefill_step
from serving.engines.rag import RagService
from serving.engines.reranker import RerankerEngine
from serving.engines.retriever import Retriever
from serving.engines.types import EngineObserver, SamplingParams
from serving.faults import StepDelay
from serving.platform import Platform
from serving.registry import ServedModel
from tests.serving.conftest import running_engine

QUESTIONS = [
    "What is Python?",
    "Name three colours of the rainbow and say which one you like best.",
    "Hi",
    "Explain what a list comprehension does, in one sentence.",
]


@pytest.fixture
def engine(chat_parts) -> Iterator[ChatEngine]:  # type: ignore[no-untyped-def]
    with running_engine(chat_parts, max_batch_size=3, max_queue=2, max_context_tokens=256, timeout_s=60) as eng:
        yield eng


def _reference(chat_parts, prompt: list[int], max_new: int) -> str:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, len(prompt) :], skip_special_tokens=True)


def test_continuous_batching_matches_one_stream_generate(engine: ChatEngine, chat_parts) -> None:  # type: ignore[no-untyped-def]
    """Four requests on three slots, each sent once the one before it has its first token (so it joins a
    batch mid-generation, and the fourth waits for a slot): each answer equals solo greedy `generate`."""
    prompts = [engine.encode_messages([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=12, temperature=0)

    async def run() -> list[str]:
        started = [asyncio.Event() for _ in prompts]

        async def one(i: int) -> str:
            if i:
                await started[i - 1].wait()
            parts = []
            async for delta in engine.submit(prompts[i], params).stream():
                started[i].set()
                parts.append(delta.text)
            return "".join(parts)

        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    got = asyncio.run(run())
    want = [_reference(chat_parts, p, 12) for p in prompts]
    assert got == want


def test_chunked_prefill_equals_the_whole_prompts(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """Prompts of different lengths prefilled 8 tokens at a time give the whole prefill's logits and first tokens."""
    model, tok = chat_parts
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in (QUESTIONS[0], QUESTIONS[1] + " " + QUESTIONS[2])]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    whole = begin_prefill(model, [0, 1], prompts, pad)
    assert prefill_step(model, whole)
    chunked, steps = begin_prefill(model, [0, 1], prompts, pad), 1
    while not prefill_step(model, chunked, budget=8):  # 2 rows: 4 columns a chunk
        steps += 1
    assert steps == -(-chunked.ids.shape[1] // 4)
    assert whole.logits is not None and chunked.logits is not None
    torch.testing.assert_close(chunked.logits, whole.logits, atol=1e-4, rtol=1e-4)
    greedy = lambda logits, rows: logits.argmax(-1)  # noqa: E731
    assert finish_prefill(chunked, greedy).next.tolist() == finish_prefill(whole, greedy).next.tolist()


def test_chunked_prefill_lets_running_requests_decode_and_keeps_greedy_answers(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """A long prompt arriving while another answer streams is prefilled in chunks, one per decode step: the running
    answer gets a token per chunk before the newcomer's first, and both answers are still greedy `generate`'s."""
    chunk = 8
    limits = {"max_batch_size": 4, "max_context_tokens": 512, "timeout_s": 60, "prefill_chunk_tokens": chunk}
    with running_engine(chat_parts, **limits) as eng:
        short = eng.encode_messages([{"role": "user", "content": "Hi"}])
        long = eng.encode_messages([{"role": "user", "content": " ".join(QUESTIONS)}])

        async def run() -> tuple[str, str, list[str], int]:
            events: list[str] = []
            first = asyncio.Event()

            async def one(name: str, prompt: list[int], max_tokens: int) -> str:
                parts = []
                params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=name == "a")
                async for d in eng.submit(prompt, params).stream():
                    events.append(name)
                    first.set()
                    parts.append(d.text)
                return "".join(parts)

            a = asyncio.create_task(one("a", short, 64))
            await first.wait()
            mark = len(events)
            b = await one("b", long, 6)
            return await a, b, events, mark

        a_text, b_text, events, mark = asyncio.run(run())
    chunks = -(-len(long) // chunk)
    assert events[mark:].index("b") >= chunks - 1, (chunks, events)  # a whole prefill lets `a` through at most once
    assert b_text == _reference(chat_parts, long, 6)
    assert a_text.startswith(_reference(chat_parts, short, 64))  # `a` ignores EOS: it may run past where generate stops


def test_a_shared_system_prompt_is_kept_and_reused_with_greedy_answers_unchanged(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """Three questions under one long system prompt, one after another: the second's prefill keeps the shared
    beginning, the third starts from it, and every answer is still greedy `generate`'s."""
    system = {"role": "system", "content": "You answer questions about the Python standard library documentation. " * 3}
    limits = {"max_batch_size": 4, "max_context_tokens": 512, "timeout_s": 60, "prefix_cache_tokens": 1024}
    with running_engine(chat_parts, **limits) as eng:
        prompts = [eng.encode_messages([system, {"role": "user", "content": q}]) for q in QUESTIONS[:3]]

        async def run() -> list[str]:
            return [(await eng.submit(p, SamplingParams(max_tokens=8, temperature=0)).result()).text for p in prompts]

        got = asyncio.run(run())
        stats = eng.prefix_stats()
    assert stats is not None and (stats.hits, stats.kept) == (1, 1), stats
    assert stats.tokens_reused >= 32
    assert got == [_reference(chat_parts, p, 8) for p in prompts]


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


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Wait for a count or state to change (generous bound: this is a check, not a timing)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not condition():
        assert loop.time() < give_up, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


class _Gate:
    """A forward pre-hook that parks the scheduler inside its next forward until `open()`: while it is
    closed, whatever is admitted stays admitted and whatever waits keeps waiting, on any machine."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        self.entered.set()
        self._open.wait(timeout=300)  # never hang a broken test forever

    def remove(self) -> None:
        self._open.set()
        self._handle.remove()


def test_disconnect_frees_the_slot(engine: ChatEngine) -> None:
    prompt = engine.encode_messages([{"role": "user", "content": "Write a long essay about the sea."}])
    delay = StepDelay(engine.model, 0.05)  # 200 tokens take >= 10s: still generating when the client leaves

    async def run() -> dict[str, int]:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.submit(prompt, SamplingParams(max_tokens=200, temperature=0)).stream():
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 120)
        assert engine.load()["running"] == 1
        task.cancel()  # what BentoML/Starlette do when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: engine.load()["running"] == 0, "the cancelled request's slot to be freed")
        return engine.load()

    try:
        assert asyncio.run(run()) == {"running": 0, "waiting": 0, "limit": engine.max_batch_size}
    finally:
        delay.remove()


def test_bounded_queue_and_timeout(chat_parts) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=1, max_queue=1, max_context_tokens=256, timeout_s=3.0)
    prompt = eng.encode_messages([{"role": "user", "content": "Write a long essay about the sea."}])
    delay = StepDelay(model, 0.05)  # 200 tokens take >= 10s, past the 3s timeout
    eng.start()

    async def run() -> None:
        first = eng.submit(prompt, SamplingParams(max_tokens=200, temperature=0))
        await _until(lambda: eng.load()["running"] == 1, "the first request to take the only slot")
        eng.submit(prompt, SamplingParams(max_tokens=1))  # queued behind it
        assert eng.load()["waiting"] == 1
        with pytest.raises(QueueFull) as full:
            eng.submit(prompt, SamplingParams(max_tokens=1))
        assert full.value.retry_after_s == 1
        with pytest.raises(RequestTimeout, match="generation did not finish within the 3s request timeout"):
            await first.result()

    try:
        asyncio.run(run())
    finally:
        delay.remove()
        eng.stop()


def test_a_request_that_times_out_in_the_queue_says_so(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """Never admitted: the client hears that it waited in the queue (the server is busy), not that
    generation was slow, although its own deadline and the engine's fire together."""
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=1, max_queue=4, max_context_tokens=256, timeout_s=0.5)
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    eng.start()
    gate = _Gate(model)

    async def run() -> None:
        first = eng.submit(prompt, SamplingParams(max_tokens=4, temperature=0))
        assert await asyncio.to_thread(gate.entered.wait, 120)  # the scheduler holds the only slot
        queued = eng.submit(prompt, SamplingParams(max_tokens=4, temperature=0))
        with pytest.raises(RequestTimeout, match=r"waited in the queue past its 0.5s timeout; the server is busy"):
            await queued.result()
        assert queued.queue_ms is None
        first.cancel()

    try:
        asyncio.run(run())
    finally:
        gate.remove()
        eng.stop()


def test_failed_steps_make_the_engine_unhealthy(chat_parts) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=2, max_queue=2, max_context_tokens=256, max_failed_steps=2)
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    params = SamplingParams(max_tokens=4, temperature=0)

    def broken(module: torch.nn.Module, args: Any) -> None:
        raise RuntimeError("injected device fault")

    eng.start()
    handle = model.register_forward_pre_hook(broken)

    async def run() -> None:
        for _ in range(2):
            assert eng.health().healthy
            with pytest.raises(Overloaded, match="generation failed on the server"):
                await eng.submit(prompt, params).result()
        health = eng.health()
        assert not health.healthy
        assert health.reason == "the last 2 generation steps failed (last error: RuntimeError: injected device fault)"
        with pytest.raises(Overloaded, match="cannot take requests: the last 2 generation steps failed"):
            eng.submit(prompt, params)

    try:
        asyncio.run(run())
    finally:
        handle.remove()
        eng.stop()


def test_a_dead_scheduler_thread_is_unhealthy(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """A bug outside a step (here: in an observer hook during admission) ends the thread: health says why,
    the request in flight fails instead of hanging, and new requests are refused."""

    class Broken(EngineObserver):
        def queue_time(self, engine: str, seconds: float) -> None:
            raise ValueError("observer bug")

    model, tok = chat_parts
    eng = ChatEngine(model, tok, max_batch_size=2, max_queue=2, max_context_tokens=256, observer=Broken())
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    eng.start()

    async def run() -> None:
        with pytest.raises(Overloaded, match="chat engine failed"):
            await eng.submit(prompt, SamplingParams(max_tokens=4, temperature=0)).result()
        health = eng.health()
        assert not health.healthy and health.reason == "the scheduler thread died (ValueError: observer bug)"
        with pytest.raises(Overloaded, match="observer bug"):
            eng.submit(prompt, SamplingParams(max_tokens=4, temperature=0))

    try:
        asyncio.run(run())
    finally:
        eng.stop()


def test_warmup_runs_the_engines_own_forwards_before_start(chat_parts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    prompt = ChatEngine(model, tok).encode_messages([{"role": "user", "content": "Hi"}])
    want = _reference(chat_parts, prompt, 4)

    def no_generate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("warmup must go through the engine's prefill and decode, not model.generate")

    shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    monkeypatch.setattr(model, "generate", no_generate)
    eng = ChatEngine(model, tok, max_batch_size=2, max_queue=2, max_context_tokens=256)
    try:
        eng.warmup()  # before start(), as serving/platform.py calls it
    finally:
        hook.remove()
    assert shapes[0][0] == 1 and (2, 1) in shapes and shapes[-1] == (1, 1)  # prefill, batched decode, select
    eng.start()
    try:
        assert asyncio.run(_answer(eng, prompt, 4)) == want
    finally:
        eng.stop()


async def _answer(eng: ChatEngine, prompt: list[int], max_tokens: int) -> str:
    return (await eng.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)).result()).text


class _Loads(EngineObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def load(self, engine: str, running: int, waiting: int) -> None:
        self.seen.append((running, waiting))


def test_observer_sees_the_load_move(chat_parts) -> None:  # type: ignore[no-untyped-def]
    model, tok = chat_parts
    obs = _Loads()
    eng = ChatEngine(model, tok, max_batch_size=1, max_queue=4, max_context_tokens=256, observer=obs)
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    params = SamplingParams(max_tokens=3, temperature=0)
    eng.start()
    gate = _Gate(model)

    async def run() -> None:
        first = eng.submit(prompt, params)  # (0 running, 1 waiting), then admitted: (1, 0)
        assert await asyncio.to_thread(gate.entered.wait, 120)
        second = eng.submit(prompt, params)  # waits behind it: (1, 1)
        third = eng.submit(prompt, params)  # (1, 2)
        third.cancel()  # leaves the queue at once: (1, 1)
        assert obs.seen == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 1)]  # (0, 0): reported at start
        gate.remove()
        await first.result()
        await second.result()
        await _until(lambda: obs.seen[-1] == (0, 0), "the gauges to report an idle engine")
        assert (1, 0) in obs.seen[6:]  # the second request was admitted

    try:
        asyncio.run(run())
    finally:
        gate.remove()
        eng.stop()


class _HoldAfterLastToken(EngineObserver):
    """Parks the scheduler thread in `tokens`, which it calls once a request's last delta was sent and before
    the row leaves the batch: the window in which a quick client's next request arrives, held open."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()

    def tokens(self, prompt: int, completion: int) -> None:
        self.held.set()
        self.release.wait(timeout=300)  # never hang a broken test forever


def test_the_next_request_gets_the_slot_the_last_answer_left(chat_parts) -> None:  # type: ignore[no-untyped-def]
    """One slot, no queue: a client that sends its next request as soon as its answer arrived is admitted,
    even while the scheduler has not yet taken the finished row out of the batch (CI once got a 429 here)."""
    model, tok = chat_parts
    obs = _HoldAfterLastToken()
    eng = ChatEngine(model, tok, max_batch_size=1, max_queue=0, max_context_tokens=256, observer=obs)
    prompt = eng.encode_messages([{"role": "user", "content": "Hi"}])
    params = SamplingParams(max_tokens=2, temperature=0)
    eng.start()

    async def run() -> None:
        first = await eng.submit(prompt, params).result()
        assert await asyncio.to_thread(obs.held.wait, 120)  # the finished row is still in the batch now
        assert eng.load()["running"] == 0
        second = eng.submit(prompt, params)  # QueueFull before the fix: the finished row held the only slot
        obs.release.set()
        assert (await second.result()).text == first.text

    try:
        asyncio.run(run())
    finally:
        obs.release.set()
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
    lexical = LexicalIndex.build(list(docs), [d for d, _ in docs.values()])
    retriever = Retriever(embedder, coll, lexical, _retrieval_config("dense"), max_top_k=5)

    async def run():  # type: ignore[no-untyped-def]
        hits = await retriever.search("How do I turn an object into JSON?", top_k=2)
        filtered = await retriever.search("JSON", top_k=3, where={"source": "library/stdtypes.md"})
        rag = await RagService(retriever, engine, default_top_k=2).start(
            "How do I turn an object into JSON?", SamplingParams(max_tokens=8, temperature=0)
        )
        assert rag.generation is not None
        return hits, filtered, rag.sources, await rag.generation.result()

    hits, filtered, sources, answer = asyncio.run(run())
    assert hits[0].id == "a" and hits[0].source == "library/json.md" and hits[0].score > hits[1].score
    assert [h.id for h in filtered] == ["c"]
    assert [(s.number, s.chunk_ids) for s in sources] == [(1, [hits[0].id]), (2, [hits[1].id])]
    assert answer.completion_tokens > 0

    # abstention: a threshold on dense cosine that no hit reaches -> no generation, no sources
    strict = _retrieval_config("dense").model_copy(update={"abstain_threshold": 0.99, "abstain_score": "dense"})
    sceptic = RagService(Retriever(embedder, coll, lexical, strict), engine, default_top_k=2)
    gave_up = asyncio.run(sceptic.start("What is the airspeed of a swallow?", SamplingParams(max_tokens=8)))
    assert gave_up.abstained and gave_up.sources == [] and gave_up.best_score is not None
    lexical_only = asyncio.run(Retriever(embedder, coll, lexical, strict).retrieve("json", 2, mode="lexical"))
    assert not lexical_only.abstain and lexical_only.best_score is None  # BM25 is on another scale: never judged
    with pytest.raises(InvalidRequest, match="top_k"):
        asyncio.run(retriever.search("x", top_k=99))
    for mode in ("dense", "lexical", "hybrid"):
        with pytest.raises(InvalidRequest, match="filter"):
            asyncio.run(retriever.search("x", top_k=1, where={"$bogus": 1}, mode=mode))  # type: ignore[arg-type]


def test_lexical_and_hybrid_search_modes(tmp_path, embedder: EmbedderEngine) -> None:  # type: ignore[no-untyped-def]
    """Lexical finds the chunk sharing the query's (stemmed) words with its text and metadata from Chroma;
    a filter applies to it as to dense; hybrid returns the fused order with fused scores."""
    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    coll = client.create_collection("chunks-test", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    docs = {
        "a": ("json.dumps converts a Python object to a JSON string.", "library/json.md"),
        "b": ("Reading files line by line with a for loop over the file object.", "tutorial/io.md"),
        "c": ("Lists are mutable sequences; tuples are immutable.", "library/stdtypes.md"),
        "d": ("The zipfile module reads and writes ZIP archives.", "library/zipfile.md"),
    }
    texts = [d for d, _ in docs.values()]
    coll.add(
        ids=list(docs),
        documents=texts,
        embeddings=embedder.embed_sync(texts),
        metadatas=[{"source": s} for _, s in docs.values()],
    )
    retriever = Retriever(embedder, coll, LexicalIndex.build(list(docs), texts), _retrieval_config("hybrid"))

    async def run():  # type: ignore[no-untyped-def]
        return (
            await retriever.search("read files", top_k=4, mode="lexical"),
            await retriever.search("read files", top_k=4, mode="lexical", where={"source": "library/zipfile.md"}),
            await retriever.search("zzqx", top_k=4, mode="lexical"),
            await retriever.search("How do I read a file line by line?", top_k=4),  # the default: hybrid
            await retriever.search("How do I read a file line by line?", top_k=4, mode="dense"),
        )

    lexical, filtered, nothing, hybrid, dense = asyncio.run(run())
    assert lexical[0].id == "b" and lexical[0].source == "tutorial/io.md" and lexical[0].text == texts[1]
    assert {h.id for h in lexical} == {"b", "d"}  # "reads" stems like "read"; a and c share no word
    assert [h.id for h in filtered] == ["d"]
    assert nothing == []
    expected = reciprocal_rank_fusion([[h.id for h in dense], [h.id for h in lexical]], (1.0, 1.0), 60)
    assert [(h.id, round(h.score, 6)) for h in hybrid] == [(i, round(s, 6)) for i, s in expected][:4]
    assert hybrid[0].id == "b" and all(h.text for h in hybrid)


def test_reranker_engine_scores_checks_and_reranks_search(tmp_path, base_dir: Path, embedder: EmbedderEngine) -> None:  # type: ignore[no-untyped-def]
    """The engine scores exactly as the model does, refuses what it cannot score, and search with `rerank`
    returns the first stage's hits in the reranker's order with its scores."""
    model = load_reranker(base_dir / "embedder", device="cpu")  # the real weights; its head is untrained
    engine = RerankerEngine(model, max_documents=3)
    docs = ["json.dumps converts an object", "open a file", "lists are mutable"]
    scores = asyncio.run(engine.score("How do I write JSON?", docs))
    direct = model.predict([("How do I write JSON?", d) for d in docs])
    assert np.allclose(scores, direct, atol=1e-5) and all(0.0 <= s <= 1.0 for s in scores)
    for query, documents, param in (("", docs, "query"), ("q", [], "documents"), ("q", docs * 2, "documents")):
        with pytest.raises(InvalidRequest) as e:
            asyncio.run(engine.score(query, documents))
        assert e.value.param == param
    assert engine.load() == {"running": 0, "waiting": 0, "limit": 1}
    assert engine.count_tokens("q", docs) > len(docs)

    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    coll = client.create_collection("chunks-test", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    coll.add(ids=["a", "b", "c"], documents=docs, embeddings=embedder.embed_sync(docs))
    retriever = Retriever(
        embedder, coll, LexicalIndex.build(["a", "b", "c"], docs), _retrieval_config("dense"), reranker=engine
    )
    first = asyncio.run(retriever.search("How do I write JSON?", top_k=3, rerank=False))
    reranked = asyncio.run(retriever.search("How do I write JSON?", top_k=2))  # the default: rerank
    by_id = dict(zip(["a", "b", "c"], scores, strict=True))
    expected = sorted((h.id for h in first), key=lambda i: -by_id[i])[:2]
    assert [h.id for h in reranked] == expected
    assert [h.score for h in reranked] == pytest.approx([by_id[i] for i in expected], abs=1e-5)
    bare = Retriever(embedder, coll, LexicalIndex.build(["a"], ["json"]), _retrieval_config("dense"))
    with pytest.raises(InvalidRequest, match="serves no reranker"):
        asyncio.run(bare.search("q", top_k=1, rerank=True))


def _retrieval_config(mode: str) -> RetrievalConfig:
    return RetrievalConfig.of(
        RetrievalParams(),
        embedder_name="embedder",
        embedder_version="1",
        chunks_md5="x",
        chunking={},
        mode=mode,
        metric="mrr@10",
        scores={},
        reasons=[],
    )


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


def test_platform_readiness_and_liveness_follow_the_engines(chat_parts, embedder: EmbedderEngine) -> None:  # type: ignore[no-untyped-def]
    """Not ready while loading; ready and alive when warmed; neither once the chat engine is unhealthy,
    with the engine's reason (what /v1/status shows)."""
    model, tok = chat_parts
    chat = ChatEngine(model, tok, max_batch_size=2, max_queue=2, max_context_tokens=256, max_failed_steps=1)
    coll = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False)).get_or_create_collection(
        "readiness", embedding_function=None
    )
    retriever = Retriever(embedder, coll, LexicalIndex.build(["x"], ["nothing"]), _retrieval_config("dense"))
    info = ServedModel("chat", "champion", "1", Path("."), False)
    platform = Platform(embedder, chat, retriever, RagService(retriever, chat), info, info, info, "chunks-test")
    assert platform.readiness() == (False, "loading and warming the models")
    platform.start()
    try:
        assert platform.readiness() == (True, None) and platform.is_alive()
        hook = model.register_forward_pre_hook(_raise_device_fault)
        try:
            prompt = chat.encode_messages([{"role": "user", "content": "Hi"}])
            with pytest.raises(Overloaded):
                asyncio.run(_two_tokens(chat, prompt))
        finally:
            hook.remove()
        ready, reason = platform.readiness()
        assert not ready and not platform.is_alive()
        assert reason is not None and reason.startswith("chat engine unhealthy: the last 1 generation steps failed")
    finally:
        platform.stop()


def _raise_device_fault(module: torch.nn.Module, args: Any) -> None:
    raise RuntimeError("injected device fault")


async def _two_tokens(chat: ChatEngine, prompt: list[int]) -> str:
    return (await chat.submit(prompt, SamplingParams(max_tokens=2, temperature=0)).result()).text
