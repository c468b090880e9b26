"""The playground page in a real headless Chromium against the real server (keys on, 50 ms per decode step).

One page for the module, used in order as a person would: load it (no key needed), give the key it asks for, chat
(streamed, the same greedy answer the API gives), stop a long answer (the server frees the slot), see an API error
in words, ask a RAG question (streamed answer, sources with scores and text, citations linked), search.
Waits are on the page's own state (`data-state`, text) and the server's /v1/status; the timeouts are hang guards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser import NoChromium, chromium, chromium_path
from tests.serving.conftest import API_KEYS, Server, until_status

pytestmark = pytest.mark.slow

WAIT_MS = 120_000  # hang guard for the page's state, not a timing
Q = "How do I convert a Python object to a JSON string?"


@pytest.fixture(scope="module")
def requests_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(server: Server, requests_seen: list[str]) -> Iterator[Page]:
    try:
        chromium_path()
    except NoChromium as e:  # fail, never skip: a missing browser must not pass as a green run
        pytest.fail(str(e))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        page.on("request", lambda r: requests_seen.append(r.url))
        page.goto(f"{server.url}/")
        yield page


def _status(server: Server) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{server.url}/v1/status", headers=server.headers, timeout=30).json()
    return found


def _chat_until(server: Server, what: str, ok: Callable[[dict[str, Any]], bool]) -> None:
    until_status(server, what, lambda status: ok(status["engines"]["chat"]))


def _settings(page: Page, max_tokens: int, temperature: float = 0.0) -> None:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", str(temperature))


def test_the_page_is_public_asks_for_the_key_and_shows_what_is_served(
    page: Page, server: Server, requests_seen: list[str]
) -> None:
    assert page.url == f"{server.url}/playground"  # / redirects to it
    assert httpx.get(f"{server.url}/playground/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/playground/nope.js").status_code == 404
    expect(page.locator("#key-form")).to_be_visible()  # keys are on: the status call got a 401
    expect(page.locator("#health")).to_contain_text("API key")
    page.fill("#api-key", API_KEYS[0])
    page.click("#key-form button[type=submit]")
    expect(page.locator("#health")).to_have_attribute("data-state", "ready")
    status = _status(server)
    served = page.locator("#served")
    for m in status["models"].values():
        expect(served).to_contain_text(f"{m['name']} v{m['version']} @{m['alias']}")
    expect(served).to_contain_text(status["index"])
    assert all(url.startswith(server.url) for url in requests_seen), requests_seen  # nothing from the internet


def test_chat_streams_the_same_greedy_answer_the_api_gives(page: Page, server: Server) -> None:
    _settings(page, 12)
    page.fill("#chat-input", Q)
    page.press("#chat-input", "Enter")
    reply = page.locator(".turn.assistant").last
    expect(reply).to_have_attribute("data-state", "done")
    api = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=server.headers,
        json={"model": "chat", "messages": [{"role": "user", "content": Q}], "max_tokens": 12, "temperature": 0},
        timeout=WAIT_MS / 1000,
    ).json()
    assert reply.locator(".text").text_content() == api["choices"][0]["message"]["content"]
    assert int(reply.get_attribute("data-deltas") or 0) >= 2  # arrived in pieces, not at once
    expect(reply.locator(".meta")).to_contain_text(f"{api['usage']['completion_tokens']} tokens")


def test_stop_cancels_the_answer_on_the_server(page: Page, server: Server) -> None:
    page.click("#chat-clear")
    _chat_until(server, "idle before the test", lambda s: s["running"] == 0 and s["waiting"] == 0)
    _settings(page, 200)  # >= 10 s at 50 ms per step
    page.fill("#chat-input", Q)
    page.click("#chat-send")
    reply = page.locator(".turn.assistant").last
    expect(reply).not_to_have_attribute("data-deltas", "0")  # streaming has begun
    _chat_until(server, "the answer running", lambda s: s["running"] == 1)
    page.click("#chat-stop")
    expect(reply).to_have_attribute("data-state", "stopped")
    _chat_until(server, "the slot freed after Stop", lambda s: s["running"] == 0 and s["waiting"] == 0)
    expect(page.locator("#chat-send")).to_be_enabled()


def test_an_api_error_is_shown_in_words(page: Page) -> None:
    _settings(page, 100_000)  # over the server's cap of 256
    page.fill("#chat-input", "hello")
    page.click("#chat-send")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("400")
    expect(error).to_contain_text("256")
    expect(error).to_contain_text("max_tokens")
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "failed")


def test_rag_streams_an_answer_with_its_sources_linked(page: Page, server: Server) -> None:
    page.click("#modes [data-mode=rag]")
    _settings(page, 16)
    page.fill("#rag-min-score", "-1")  # always answer (the tiny reranker's scores are low)
    page.fill("#rag-question", Q)
    page.click("#rag-send")
    answer = page.locator("#rag-answer")
    expect(answer).to_have_attribute("data-state", "done")
    expect(page.locator("#error")).to_be_hidden()  # the last test's error is cleared by a new request
    body = {"question": Q, "max_tokens": 16, "temperature": 0, "min_score": -1}
    api = httpx.post(f"{server.url}/v1/rag", headers=server.headers, json=body, timeout=WAIT_MS / 1000).json()
    sources = page.locator("#rag-sources > li")
    expect(sources).to_have_count(len(api["sources"]))
    for i, s in enumerate(api["sources"]):
        item = sources.nth(i)
        assert item.get_attribute("id") == f"source-{s['number']}"
        expect(item.locator(".path")).to_have_text(s["source"])
        expect(item.locator(".score")).to_have_text(f"score {s['score']:.3f}")
    first = sources.first
    first.locator("summary").click()  # the chunk's text, expandable
    expect(first.locator("pre")).to_be_visible()
    assert first.locator("pre").text_content() == api["sources"][0]["text"]
    assert answer.text_content() == api["answer"]  # greedy: the API's answer, reassembled from the stream
    cited = page.locator("#rag-sources > li.cited").evaluate_all("items => items.map(x => Number(x.dataset.number))")
    assert sorted(cited) == sorted(api["citations"])
    for link in page.locator("#rag-answer a.cite").all():  # every citation link points at a listed source
        target = (link.get_attribute("href") or "").removeprefix("#")
        expect(page.locator(f"[id='{target}']")).to_have_count(1)


def test_search_lists_the_hits_with_scores_and_mode(page: Page, server: Server) -> None:
    page.click("#modes [data-mode=search]")
    page.fill("#search-query", "json")
    page.select_option("#search-mode", "lexical")
    page.fill("#search-top-k", "3")
    page.click("#search-send")
    meta = page.locator("#search-meta")
    expect(meta).to_have_attribute("data-mode", "lexical")
    body = {"query": "json", "mode": "lexical", "top_k": 3}
    api = httpx.post(f"{server.url}/v1/search", headers=server.headers, json=body, timeout=30).json()
    hits = page.locator("#search-results > li")
    expect(hits).to_have_count(len(api["results"]))
    assert [h.inner_text() for h in hits.locator(".path").all()] == [r["source"] or r["id"] for r in api["results"]]
