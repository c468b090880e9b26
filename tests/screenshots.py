"""`make screenshots`: the README's pictures of the playground, from this checkout's served champions.

The browser test (tests/serving/test_playground.py) runs on the tiny test models, whose answers are noise; the
pictures show what a user sees with the default pipeline's models. This serves the project (default: this checkout,
after `make pipeline`) on a free port, opens the playground in headless Chromium (tests/browser.py), asks a RAG
question, opens the first cited source, and saves full-page PNGs: `playground-rag.png`, then a chat turn as
`playground-chat.png`; last, the top of the pipeline report (`artifacts/reports/pipeline.html`) as
`pipeline-report.png`.

    python -m tests.screenshots --out docs/img [--project .] [--question "..."]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect

from serving.launch import started_server
from tests.browser import chromium

WAIT_MS = 600_000  # a long RAG answer on 2 cores; a hang guard
QUESTION = "How do I convert a Python object to a JSON string?"
CHAT = "Write a Python function that reverses a string."


def rag(page: Page, question: str, out: Path) -> None:
    page.click("#modes [data-mode=rag]")
    page.fill("#max-tokens", "160")
    page.fill("#temperature", "0")
    page.fill("#rag-question", question)
    page.click("#rag-send")
    expect(page.locator("#rag-answer")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    cited = page.locator("#rag-sources > li.cited")
    opened = cited.first if cited.count() else page.locator("#rag-sources > li").first
    opened.locator("summary").click()
    page.locator("#settings > summary").click()  # folded: the answer and its sources are the picture
    page.screenshot(path=str(out / "playground-rag.png"), full_page=True)
    page.locator("#settings > summary").click()


def chat(page: Page, message: str, out: Path) -> None:
    page.click("#modes [data-mode=chat]")
    page.fill("#max-tokens", "160")
    page.fill("#system", "You are a concise Python assistant.")
    page.fill("#chat-input", message)
    page.click("#chat-send")
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    page.screenshot(path=str(out / "playground-chat.png"), full_page=True)


def report(page: Page, project: Path, out: Path) -> None:
    page.set_viewport_size({"width": 1100, "height": 1600})
    page.goto((project / "artifacts/reports/pipeline.html").resolve().as_uri())
    page.screenshot(path=str(out / "pipeline-report.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # No API keys (a person's first run), and a private BentoML home (its metrics folder is wiped at start).
        env = {k: v for k, v in os.environ.items() if k != "SERVING_API_KEYS"} | {"BENTOML_HOME": tmp}
        log = Path(tmp) / "bentoml.log"
        with started_server(args.project.resolve(), log, env) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{server.url}/")
            expect(page.locator("#health")).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
            rag(page, args.question, args.out)
            chat(page, CHAT, args.out)
            report(page, args.project, args.out)
    print(f"saved playground-rag.png, playground-chat.png and pipeline-report.png in {args.out}")


if __name__ == "__main__":
    main()
