"""From a checked request to OpenAI's answers: one engine request per choice, text pieces, finish reasons.

`n` (and a list of prompts) is served by repeated engine requests, one per choice, run concurrently: the
engine's `num_return_sequences` returns beams, which are not independent samples. With a `seed`, choice
`i` uses `seed + i`, so choice 0 is what `n: 1` with that seed returns and the choices still differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from backend.detokenizer import IncrementalDetokenizer
from openai_frontend.discovery import ServedModel
from openai_frontend.engine import NO_LIMIT, EngineRequest, TritonEngine
from openai_frontend.protocol import MAX_SEED, Generation, OpenAIError
from openai_frontend.text import StopMatcher, TokenText


@dataclass
class TokenLogprob:
    token: str
    bytes: bytes
    logprob: float
    offset: int  # where the token's text starts in the choice's text (approximate at held-back text)


@dataclass
class Piece:
    """New text of one choice; the last piece of a choice has its `finish_reason`."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


@dataclass
class Choice:
    index: int
    prompt_ids: list[int]
    seed: int | None
    prefix: str = ""  # echoed prompt text (completions' `echo`)
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens whose KV the engine found cached; None: not reported
    emitted: int = field(default=0, repr=False)  # characters of text returned so far


def encode_prompt(served: ServedModel, text: str, add_special_tokens: bool, param: str) -> list[int]:
    ids = served.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    if not ids:
        raise OpenAIError(f"{param} encodes to no tokens", param)
    return [int(i) for i in ids]


def check_prompt(served: ServedModel, ids: list[int], param: str) -> None:
    """What the engine would refuse, refused here as a 400 before any engine request."""
    lim = served.limits
    vocab = lim.vocab_size or len(served.tokenizer)
    bad = [t for t in ids if t < 0 or t >= vocab]
    if bad:
        raise OpenAIError(f"{param} holds token id {bad[0]}, outside the vocabulary [0, {vocab})", param)
    if lim.max_input_len is not None and len(ids) > lim.max_input_len:
        raise OpenAIError(
            f"the prompt has {len(ids)} tokens, more than this model's max_input_len {lim.max_input_len}",
            param,
            code="context_length_exceeded",
        )
    if lim.max_seq_len is not None and len(ids) >= lim.max_seq_len:
        raise OpenAIError(
            f"the prompt has {len(ids)} tokens: no room left to generate under max_seq_len {lim.max_seq_len}",
            param,
            code="context_length_exceeded",
        )


def make_choices(prompts: list[list[int]], gen: Generation, prefixes: list[str] | None = None) -> list[Choice]:
    """`n` choices per prompt, indexed prompt-major as OpenAI does."""
    out = []
    for p, ids in enumerate(prompts):
        for i in range(gen.n):
            seed = None if gen.seed is None else (gen.seed + i) % (MAX_SEED + 1)
            out.append(Choice(p * gen.n + i, ids, seed, prefixes[p] if prefixes else ""))
    return out


class Generator:
    """Runs the choices of one request against one served model."""

    def __init__(
        self,
        engine: TritonEngine,
        served: ServedModel,
        gen: Generation,
        default_max_tokens: int | None = None,
        cached_tokens: bool = False,
    ):
        self.engine, self.served, self.gen = engine, served, gen
        self.default_max_tokens = default_max_tokens
        self.cached_tokens = cached_tokens and served.reports_reuse  # ask the engine for its reused blocks
        tok = served.tokenizer
        self.stop_words = [tok.encode(s, add_special_tokens=False) for s in gen.stop]
        self.request_id = uuid.uuid4().hex
        self.token_text = TokenText(tok, served.skip_special_tokens) if gen.logprobs else None

    def _max_tokens(self, prompt_len: int) -> int:
        room = None if self.served.limits.max_seq_len is None else self.served.limits.max_seq_len - prompt_len
        if self.gen.max_tokens is None and self.default_max_tokens is not None:
            return self.default_max_tokens if room is None else min(self.default_max_tokens, room)
        if self.gen.max_tokens is None:
            return room if room is not None else NO_LIMIT
        # Like TensorRT-LLM, a completion that would pass max_seq_len is cut there (finish_reason "length").
        return self.gen.max_tokens if room is None else min(self.gen.max_tokens, room)

    def _finish_reason(self, choice: Choice, max_tokens: int) -> str:
        # The engine drops the end token from its output, so a completion that ended at its end token
        # holds fewer tokens than it was allowed; at its limit (or at max_seq_len) it was cut.
        if choice.completion_tokens >= max_tokens:
            return "length"
        max_seq = self.served.limits.max_seq_len
        if max_seq is not None and len(choice.prompt_ids) + choice.completion_tokens >= max_seq:
            return "length"
        return "stop"

    async def run(self, choice: Choice) -> AsyncIterator[Piece]:
        """One choice's pieces: text as it settles, cut at the first stop string, then the finish reason."""
        gen, served = self.gen, self.served
        max_tokens = self._max_tokens(len(choice.prompt_ids))
        request = EngineRequest(
            model=served.engine_model,
            prompt_ids=choice.prompt_ids,
            max_tokens=max_tokens,
            streaming=served.decoupled,
            gen=gen,
            request_id=f"oai-{self.request_id}-{choice.index}",
            seed=choice.seed,
            stop_words=self.stop_words,
            reused_blocks=self.cached_tokens,
        )
        detok = IncrementalDetokenizer(served.tokenizer, served.skip_special_tokens, choice.prompt_ids)
        stops = StopMatcher(gen.stop)
        if choice.prefix:
            yield self._piece(choice, choice.prefix)
        async with contextlib.aclosing(self.engine.generate(request)) as chunks:
            async for chunk in chunks:
                choice.completion_tokens += len(chunk.ids)
                if chunk.reused_blocks is not None:
                    # Whole blocks; the prompt's last token is always computed, so never more than the rest.
                    tpb = served.limits.tokens_per_block or 0
                    choice.cached_tokens = min(chunk.reused_blocks * tpb, len(choice.prompt_ids) - 1)
                if gen.logprobs:
                    # Token by token, so that each log prob is placed at its token's text.
                    text, logprobs, hit = "", [], False
                    for t, lp in zip(chunk.ids, chunk.log_probs or [0.0] * len(chunk.ids), strict=False):
                        out, hit = stops.feed(detok.add([t]))
                        if hit:
                            text += out
                            break
                        token, raw = self.token_text(t)
                        logprobs.append(TokenLogprob(token, raw, lp, choice.emitted + len(text)))
                        text += out
                    if not hit and chunk.final:
                        out, hit = stops.feed(detok.add([], final=True))
                        text += out
                else:
                    logprobs = None
                    out, hit = stops.feed(detok.add(chunk.ids, final=chunk.final))
                    text = out
                if hit:
                    yield self._piece(choice, text, logprobs, "stop")
                    return  # closing `chunks` cancels the engine request
                if chunk.final:
                    text += stops.flush()
                    yield self._piece(choice, text, logprobs, self._finish_reason(choice, max_tokens))
                    return
                # A chunk per engine response even when its text is held back (part of a character, or
                # a token that decodes to nothing), as vLLM streams: clients time tokens by chunks.
                yield self._piece(choice, text, logprobs)

    @staticmethod
    def _piece(choice: Choice, text: str, logprobs=None, finish_reason: str | None = None) -> Piece:
        choice.emitted += len(text)
        return Piece(choice.index, text, logprobs, finish_reason)


async def merged(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[Piece]:
    """The pieces of several choices as they come. Closing it cancels the choices still running."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for piece in only:
                yield piece
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[Piece]) -> None:
        try:
            async with contextlib.aclosing(stream) as s:
                async for piece in s:
                    await queue.put(piece)
            await queue.put(done)
        except Exception as e:  # handed to the consumer, which raises it
            await queue.put(e)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is done:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
