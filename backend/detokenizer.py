"""Streaming-correct detokenization.

Decoding each streamed chunk of token ids on its own (what the TensorRT-LLM backend's postprocessing does)
breaks two things: a multi-byte UTF-8 character split across chunks decodes to U+FFFD pieces, and
SentencePiece tokenizers drop the leading space of the first token of every decode call.

The fix used here: the text of a prefix of the token sequence is `stable(decode(prefix))`, the decoded text
with trailing U+FFFD characters removed (they may be an incomplete character that later tokens complete), and,
for SentencePiece byte-fallback tokenizers, without a trailing run of `<0xNN>` tokens (see `_settled`).
Because decoding is left to right, `stable(decode(ids[:k]))` is a prefix of `stable(decode(ids[:k+1]))`, so
each chunk's text is the difference of two of them, and the last chunk (decoded fully, unstripped) makes the
concatenation telescope to exactly `decode(ids)`, byte for byte, the non-streamed text.

Two ways to use it:
- `IncrementalDetokenizer`: stateful, one per stream, decoding a short window per step (the engine
  process's text front behind `ensemble`, the BLS model, the OpenAI front end, clients); `add_many` steps
  many streams with one batched decode.
- `stream_delta(prefix_ids, new_ids, final)`: stateless, given the tokens streamed before this chunk (the
  postprocessing model, which gets them from the `tensorrt_llm` model's `stream_prefix_ids` output, so that
  any postprocessing instance can decode any chunk and no per-request state can leak).

Both decode with `clean_up_tokenization_spaces=False`: that clean-up rewrites text across token boundaries
(" ." -> "."), which would make earlier chunks wrong after the fact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_byte_ids_cache: dict[int, frozenset[int]] = {}


def byte_fallback_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of SentencePiece byte-fallback tokens (`<0xE4>`); empty for byte-level BPE tokenizers.

    The ByteFallback decoder turns a whole run of such tokens into U+FFFD (one per token) when the run is
    not valid UTF-8, so a run at the end may still change, even its valid bytes ("<0x1B>" then "<0xB2>").
    """
    key = id(tokenizer)
    ids = _byte_ids_cache.get(key)
    if ids is None:
        vocab = tokenizer.get_vocab()
        ids = frozenset(i for t, i in vocab.items() if _BYTE_TOKEN.match(t))
        _byte_ids_cache[key] = ids
    return ids


def _settled(tokenizer, ids: Sequence[int], skip_special_tokens: bool = True) -> int:
    """How many leading tokens have text no later token can change: all but a trailing byte-token run.

    Skipped special tokens are transparent (the decoder never sees them, so byte runs join across them).
    """
    byte_ids = byte_fallback_ids(tokenizer)
    if not byte_ids:
        return len(ids)
    special = set(tokenizer.all_special_ids) if skip_special_tokens else set()
    n = len(ids)
    while n and (int(ids[n - 1]) in byte_ids or int(ids[n - 1]) in special):
        n -= 1
    return n


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """The one decode call used for streamed and non-streamed text alike."""
    return tokenizer.decode(
        [int(i) for i in ids], skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


def stable(text: str) -> str:
    """Text that no later token can change: trailing U+FFFD may be an incomplete character."""
    return text.rstrip(REPLACEMENT)


def new_text(longer: str, shorter: str) -> str:
    """`longer` past its prefix `shorter`."""
    if longer.startswith(shorter):
        return longer[len(shorter) :]
    # A decoder that rewrites earlier text (should not happen without clean-up): emit what is new
    # past the common prefix rather than repeat text.
    n = 0
    for a, b in zip(longer, shorter, strict=False):
        if a != b:
            break
        n += 1
    return longer[max(n, len(shorter)) :] if len(longer) > len(shorter) else ""


def stream_delta(
    tokenizer: PreTrainedTokenizerBase,
    prefix_ids: Sequence[int],
    new_ids: Sequence[int],
    final: bool,
    skip_special_tokens: bool = True,
) -> str:
    """Text of chunk `new_ids` of a stream whose earlier chunks were `prefix_ids` (stateless)."""
    prefix_ids = list(prefix_ids)
    before = _stable_text(tokenizer, prefix_ids, skip_special_tokens)
    all_ids = prefix_ids + list(new_ids)
    if final:
        now = decode(tokenizer, all_ids, skip_special_tokens)
    else:
        now = _stable_text(tokenizer, all_ids, skip_special_tokens)
    return new_text(now, before)


def _stable_text(tokenizer, ids: list[int], skip_special_tokens: bool) -> str:
    n = _settled(tokenizer, ids, skip_special_tokens)
    return stable(decode(tokenizer, ids[:n], skip_special_tokens)) if n else ""


CONTEXT_TOKENS = 5  # prompt tokens decoded with the completion (enough for any leading-space rule)


class IncrementalDetokenizer:
    """One stream's text: `add(new_ids)` returns the text they settle; `add([], final=True)` the rest.

    Decodes only a short window of tokens per call (vLLM's and TGI's method), never the whole sequence, so
    a stream costs O(1) per step however long it grows. The rules for settled text are those above (a
    trailing U+FFFD may be an incomplete character; a trailing run of SentencePiece byte tokens may still
    change), so the pieces concatenate to the text decoded in one call, however the tokens are chunked.

    With `prompt_ids`, the window starts a few tokens into the prompt: the completion's first token is then
    decoded in context, so SentencePiece keeps its leading space (" world" after "Hello", as vLLM and OpenAI
    return it). Without (the TensorRT-LLM postprocessing's behaviour), the generated tokens are decoded alone.

    Invariant: `ids[:read]` are emitted, and `decode(ids[prefix:read])` is the text of the window before
    them, so the next piece is `decode(ids[prefix:end])` past that text.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = [int(i) for i in list(prompt_ids)[-CONTEXT_TOKENS:]]
        self.prefix = 0
        self.read = len(self.ids)
        self.held = ""  # text emitted past `read` (a character completed, its token run not yet settled)
        self._pieces: list[str] = []  # joined when read: `+=` on a string attribute copies it every step
        self.done = False
        self._byte_ids = byte_fallback_ids(tokenizer)
        self._special = set(tokenizer.all_special_ids) if skip_special_tokens and self._byte_ids else set()

    def _settled_end(self) -> int:
        """All ids but a trailing run of byte-fallback tokens (skipped special tokens are transparent)."""
        end = len(self.ids)
        if self._byte_ids:
            while end > self.read and (self.ids[end - 1] in self._byte_ids or self.ids[end - 1] in self._special):
                end -= 1
        return end

    def windows(self, new_ids: Sequence[int], final: bool = False) -> tuple[list[int], list[int], int] | None:
        """Takes `new_ids`; the two windows whose texts `advance` needs (before, now) and the end, or None
        when nothing can be emitted yet."""
        self.ids.extend(map(int, new_ids))
        end = len(self.ids) if final else self._settled_end()
        if end <= self.read and not final:
            return None
        return self.ids[self.prefix : self.read], self.ids[self.prefix : end], end

    def advance(self, before: str, now: str, end: int, final: bool = False) -> str:
        """The piece of text given the decoded windows of `windows`."""
        text = new_text(now, before)
        if not final and text.endswith(REPLACEMENT):
            # An incomplete character: emit what is settled before it, keep the window where it is.
            stable = text.rstrip(REPLACEMENT)
            piece = stable[len(self.held) :] if stable.startswith(self.held) else ""
            self.held += piece
        else:
            piece = text[len(self.held) :] if text.startswith(self.held) else text
            self.held = ""
            if not final:
                self.prefix, self.read = self.read, end
        if piece:
            self._pieces.append(piece)
        self.done = final
        return piece

    def add(self, new_ids: Sequence[int], final: bool = False) -> str:
        w = self.windows(new_ids, final)
        if w is None:
            return ""
        before, now, end = w
        skip = self.skip_special_tokens
        return self.advance(decode(self.tokenizer, before, skip), decode(self.tokenizer, now, skip), end, final)

    def finish(self) -> str:
        """Flush what was held back, unless the last piece was already final."""
        return "" if self.done else self.add([], final=True)

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""


def add_many(items: Sequence[tuple[IncrementalDetokenizer, Sequence[int], bool]]) -> list[str]:
    """`d.add(new_ids, final)` for many streams of one tokenizer, with one batched decode: a fast
    tokenizer decodes the batch in Rust with the GIL released (the engine process's text thread runs
    beside the executor thread)."""
    if not items:
        return []
    first = items[0][0]
    tok, skip = first.tokenizer, first.skip_special_tokens
    plans = [d.windows(new, final) for d, new, final in items]
    seqs = [seq for w in plans if w is not None for seq in w[:2]]
    backend = getattr(tok, "_tokenizer", None)
    if seqs and hasattr(backend, "decode_batch"):
        texts = backend.decode_batch(seqs, skip_special_tokens=skip)
    else:
        texts = [decode(tok, seq, skip) for seq in seqs]
    out, k = [], 0
    for (d, _, final), w in zip(items, plans, strict=True):
        if w is None:
            out.append("")
            continue
        out.append(d.advance(texts[k], texts[k + 1], w[2], final))
        k += 2
    return out
