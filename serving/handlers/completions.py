"""/v1/completions (legacy text completions, streamed too) and /v1/tokenize, /v1/detokenize, on the chat engine.

The prompt is continued as it is, with no chat template; everything else (sampling, `n` sharing one prefill,
logprobs, penalties, stop strings, limits) is the chat route's engine path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core.errors import InvalidRequest, ModelNotFound
from serving.handlers.base import CHAT, EventStream, RequestRecord
from serving.handlers.chat import Started, cancel_all, chat_pieces, merged_pieces, submit_n
from serving.handlers.rag import AnswerPiece
from serving.platform import Platform
from serving.schemas import SamplingLimits, usage
from serving.schemas.completions import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    LegacyLogprobs,
    TokenizeRequest,
    TokenizeResponse,
)


class CompletionsHandler:
    def __init__(self, platform: Platform, limits: SamplingLimits) -> None:
        self.platform = platform
        self.limits = limits

    def _check_model(self, model: str) -> None:
        if model != CHAT:
            raise ModelNotFound(f"model `{model}` does not exist here; use `chat` (see /v1/models)", param="model")

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        tok = self.platform.chat.tokenizer
        if isinstance(prompt, str):
            return list(tok(prompt, add_special_tokens=False)["input_ids"])
        bad = [t for t in prompt if not 0 <= t < len(tok)]
        if bad:
            raise InvalidRequest(f"token ids {bad[:5]} are outside the vocabulary (0..{len(tok) - 1})", param="prompt")
        return prompt

    async def create(self, req: CompletionRequest, record: RequestRecord) -> CompletionResponse | EventStream:
        """Queue `n` continuations of the prompt; the whole response, or its chunks when `stream` is set.

        Raises:
            ModelNotFound: `model` is not `chat`.
            InvalidRequest / ContextLengthExceeded / QueueFull: as for chat completions.
        """
        self._check_model(req.model)
        ids = self._prompt_ids(req.prompt)
        params = req.to_sampling(self.limits)
        handles = submit_n(self.platform.chat, ids, params, req.n)
        record.model, record.version, record.prompt_tokens = CHAT, self.platform.chat_info.version, len(ids)
        streams = [chat_pieces(h, record) for h in handles]
        echo = (
            (req.prompt if isinstance(req.prompt, str) else str(self.platform.chat.tokenizer.decode(ids)))
            if req.echo
            else ""
        )
        if req.stream:
            return EventStream(self._chunks(req, streams, echo), cancel_all(handles))
        results = await Started(streams, cancel_all(handles), "none").collect()
        choices = [
            CompletionChoice(
                text=echo + text, index=i, finish_reason=last.finish_reason,  # type: ignore[arg-type]
                logprobs=LegacyLogprobs.of(lps, len(echo)) if req.logprobs is not None else None,
            )
            for i, (text, last, lps) in enumerate(results)
        ]  # fmt: skip
        return CompletionResponse.new(req.model, choices, usage(len(ids), sum(r[1].completion_tokens for r in results)))

    async def _chunks(
        self, req: CompletionRequest, streams: list[AsyncIterator[AnswerPiece]], echo: str
    ) -> AsyncIterator[CompletionResponse]:
        cid = CompletionResponse.new(req.model, []).id
        offsets = [len(echo)] * len(streams)
        if echo:
            for i in range(len(streams)):
                yield CompletionResponse(id=cid, model=req.model, choices=[CompletionChoice(text=echo, index=i)])
        prompt_tokens, completion = 0, [0] * len(streams)
        async for i, piece in merged_pieces(streams):
            lps = LegacyLogprobs.of(piece.logprobs, offsets[i]) if req.logprobs is not None and piece.logprobs else None
            offsets[i] += sum(len(t.token) for t in piece.logprobs)
            if piece.text or lps or piece.finish_reason:
                choice = CompletionChoice(text=piece.text, index=i, logprobs=lps, finish_reason=piece.finish_reason)  # type: ignore[arg-type]
                yield CompletionResponse(id=cid, model=req.model, choices=[choice])
            if piece.finish_reason is not None:
                prompt_tokens, completion[i] = piece.prompt_tokens, piece.completion_tokens
        if req.include_usage:
            yield CompletionResponse(id=cid, model=req.model, choices=[], usage=usage(prompt_tokens, sum(completion)))

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        """Token ids of a text prompt, or of chat messages rendered with the chat template (vLLM's /tokenize).

        Raises:
            InvalidRequest: neither or both of `prompt` and `messages`.
        """
        self._check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequest("send either `prompt` or `messages`", param="prompt")
        chat = self.platform.chat
        if req.messages is not None:
            if req.add_generation_prompt:
                ids = chat.encode_messages(req.messages)
            else:
                enc: Any = chat.tokenizer.apply_chat_template(req.messages, tokenize=True, return_dict=True)
                ids = [int(i) for i in enc["input_ids"]]
        else:
            ids = list(chat.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
        return TokenizeResponse(count=len(ids), max_model_len=chat.window, tokens=ids)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        self._check_model(req.model)
        return DetokenizeResponse(prompt=str(self.platform.chat.tokenizer.decode(self._prompt_ids(req.tokens))))
