"""The abstention threshold: below which best-hit score RAG should say it found nothing relevant.

Measured on the held-out questions, each asked twice: as it is (answerable: its document is searched)
and with its own document taken out of what is searched (unanswerable: what a question about something
the corpus does not cover looks like to the retriever). The score is the served one's scale: the
reranker's relevance when a reranker serves, else dense cosine similarity. The threshold is the highest
that still answers at least `min_answered` of the answerable questions (params
`retrieval.abstain_min_answered`: a wrong refusal costs a user more than a weak answer with its sources
shown), or, with no such floor, the one that best separates the two (balanced accuracy: the mean of the
answered share of answerable questions and the abstained share of unanswerable ones). Ties go to the
lower threshold (answer more often).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def best_scores(
    scored: Sequence[Sequence[tuple[str, float]]], relevant: Sequence[str]
) -> tuple[list[float], list[float]]:
    """Per question, the best score with its document searched and without it.

    Args:
        scored: per question, `(document id, score)` of the hits the served scorer saw.
        relevant: per question, its document.

    Returns:
        (answerable, unanswerable) best scores; a question whose every hit is of its own document has no
        unanswerable score (nothing else was retrieved), and is left out of that list.
    """
    answerable, unanswerable = [], []
    for hits, doc in zip(scored, relevant, strict=True):
        if not hits:
            continue
        answerable.append(max(s for _, s in hits))
        others = [s for d, s in hits if d != doc]
        if others:
            unanswerable.append(max(others))
    return answerable, unanswerable


def choose_threshold(
    answerable: Sequence[float], unanswerable: Sequence[float], min_answered: float | None = None
) -> dict[str, float]:
    """The threshold (answer when the best score >= it) and its rates: the highest answering at least
    `min_answered` of the answerable questions, or (None) the one with the best balanced accuracy.

    Raises:
        ValueError: either list is empty.
    """
    if not answerable or not unanswerable:
        raise ValueError("need answerable and unanswerable scores to choose an abstention threshold")
    values = sorted(set(answerable) | set(unanswerable))
    candidates = [values[0] - 1e-6] + [(a + b) / 2 for a, b in itertools.pairwise(values)]
    best: tuple[float, float, float, float] | None = None
    for t in candidates:
        answered = sum(a >= t for a in answerable) / len(answerable)
        abstained = sum(u < t for u in unanswerable) / len(unanswerable)
        balanced = (answered + abstained) / 2
        if min_answered is not None:
            if answered >= min_answered - 1e-9:  # candidates rise: the last that qualifies is the highest
                best = (balanced, t, answered, abstained)
        elif best is None or balanced > best[0]:
            best = (balanced, t, answered, abstained)
    assert best is not None  # the lowest candidate answers every answerable question
    balanced, t, answered, abstained = best
    return {
        "threshold": round(t, 6),
        "balanced_accuracy": round(balanced, 4),
        "answered_when_answerable": round(answered, 4),
        "abstained_when_unanswerable": round(abstained, 4),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
    }
