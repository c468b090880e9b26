"""The RAG prompt: one definition shared by the chat training data, evaluation and serving.

The chat model is fine-tuned on exactly the prompt the RAG endpoint sends, so what it learns
(answer from the given passages, cite them as `[1]`, say when none answers) is what it is asked to do in
production; core/citations.py parses those citations.
"""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM_PROMPT = (
    "You answer questions about the documentation using only the numbered context passages given. "
    "Quote or paraphrase the relevant passage and cite it by its number, like [1]. "
    "If the context does not contain the answer, say so."
)

NOT_IN_CONTEXT = "The context does not answer this question."
"""The answer to a question none of the passages answers: the fine-tuning data teaches this exact sentence
(data/grounded.py) for the system prompt's "say so", and evaluation counts it as declining to answer."""


def format_context(passages: Sequence[str]) -> str:
    return "\n\n".join(f"[{i + 1}] {p.strip()}" for i, p in enumerate(passages))


def rag_messages(question: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking `question` over the numbered `passages`."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Context:\n{format_context(passages)}\n\nQuestion: {question}"},
    ]
