"""Citation cleaning over whole answers and over streams cut anywhere."""

from __future__ import annotations

import pytest

from core.citations import CitationStream, clean


@pytest.mark.parametrize(
    ("text", "n", "expected", "cited"),
    [
        ("Use json.dumps [1].", 2, "Use json.dumps [1].", [1]),
        ("Use json.dumps [3].", 2, "Use json.dumps.", []),  # a source that was not given: removed with its space
        ("A [2] and B [1, 7][2].", 2, "A [2] and B [1][2].", [2, 1]),
        ("No citation, [a] list [].", 2, "No citation, [a] list [].", []),
        ("[0]Start", 1, "Start", []),
    ],
)
def test_clean_keeps_given_sources_and_drops_others(text: str, n: int, expected: str, cited: list[int]) -> None:
    assert clean(text, n) == (expected, cited)


@pytest.mark.parametrize("answer", ["Use json.dumps [1] or dump [4]. See [2, 9] and [x] too [", "a [1][2] b  [3]"])
def test_a_stream_cut_anywhere_joins_to_the_cleaned_answer(answer: str) -> None:
    expected, cited = clean(answer, 2)
    for size in (1, 2, 3, 5):
        stream = CitationStream(2)
        pieces = [stream.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
        assert "".join(pieces) + stream.flush() == expected, size
        assert stream.cited == cited
