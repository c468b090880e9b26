"""Token ids -> streamed text, one sequence at a time, in time linear in the answer's length.

Re-decoding the whole answer at every step costs O(n) per token (O(n²) per answer). Instead, the
prefix/read-offset technique of vLLM and TGI: keep two offsets into the generated ids; decode the small
window `ids[prefix:read]` (text already sent, as context) and `ids[prefix:]`, and send the difference.
The offsets move only when the window ends on a complete character, so every window starts on a
character boundary and the concatenated deltas equal one `decode` of all the ids.

Held back until settled:
- an incomplete UTF-8 character (the window decodes to a trailing U+FFFD) until its last byte arrives;
- text that could be the start of a stop string (the longest suffix that is a proper prefix of one).

When a stop string completes, the text before it is released and nothing after it ever is.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class IncrementalDetokenizer:
    """One sequence's decoder: `push` each generated token, `flush` when the generation ends."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were decoded and sent: context for the next window
        self.read = 0
        self.held = ""  # decoded text not sent yet: it may begin a stop string
        self.stopped = False
        self.matched: str | None = None
        """The stop string that ended the text (Anthropic's `stop_sequence`), once one has."""

    def push(self, token: int) -> str:
        """Add one generated token; return the text now safe to send (often '', never past a stop string)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        return self._release(self._decode_window(final=False), final=False)

    def flush(self) -> str:
        """The generation ended: return everything still held back (cut at a stop string if one completes)."""
        if self.stopped:
            return ""
        return self._release(self._decode_window(final=True), final=True)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _decode_window(self, final: bool) -> str:
        """New text since `read`, or '' while the window ends in an incomplete character (unless final)."""
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if not final and (len(after) <= len(before) or after.endswith(_REPLACEMENT)):
            return ""  # nothing printable yet (a special token, or bytes of a character still to come)
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def _release(self, new: str, final: bool) -> str:
        text = self.held + new
        found = _first_stop(text, self.stop)
        if found is not None:
            cut, self.matched = found
            self.stopped, self.held = True, ""
            return text[:cut]
        keep = 0 if final else _stop_prefix_len(text, self.stop)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Where to cut `text` at the stop string that completes first (ties: the one that starts first), and which."""
    found = [(i + len(s), i, s) for s in stops if (i := text.find(s)) >= 0]
    if not found:
        return None
    _, cut, stop = min(found)
    return cut, stop


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class TokenTexts:
    """A token id's own text and UTF-8 bytes, as OpenAI's logprobs report them (`token`, `bytes`).

    Byte-level BPE vocabularies (GPT-2's, SmolLM2's) spell bytes as printable characters (`Ġ` is a space);
    mapping them back gives the token's exact bytes, also for a token that holds half a character (its
    `token` text then shows U+FFFD, as OpenAI's does). Other vocabularies fall back to `decode([id])`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(c in self._byte_of for c in piece):
                raw = bytes(self._byte_of[c] for c in piece)
            else:
                raw = str(self.tokenizer.decode([token_id])).encode()
            hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table for byte-level BPE (openai/gpt-2 encoder.py; transformers keeps
    it only in private modules, so it is spelled out here)."""
    printable = [(ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ"))]
    keep = [b for lo, hi in printable for b in range(lo, hi + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))
