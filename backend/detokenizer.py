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
- `IncrementalDetokenizer`: stateful, one per stream (the BLS model, clients).
- `stream_delta(prefix_ids, new_ids, final)`: stateless, given the tokens streamed before this chunk (the
  ensemble's postprocessing model, which gets them from the `tensorrt_llm` model's `stream_prefix_ids`
  output, so that any postprocessing instance can decode any chunk and no per-request state can leak).

Both decode with `clean_up_tokenization_spaces=False`: that clean-up rewrites text across token boundaries
(" ." -> "."), which would make earlier chunks wrong after the fact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_byte_ids_cache: dict[int, frozenset[int]] = {}


def byte_fallback_ids(tokenizer) -> frozenset[int]:
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


def decode(tokenizer, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
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
    tokenizer,
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


class IncrementalDetokenizer:
    """Stateful form of `stream_delta` for one stream: `add(new_ids)` returns the new text."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = ""  # == stable(decode(self.ids)) after every non-final add

    def add(self, new_ids: Sequence[int], final: bool = False) -> str:
        self.ids.extend(int(i) for i in new_ids)
        if final:
            now = decode(self.tokenizer, self.ids, self.skip_special_tokens)
        else:
            now = _stable_text(self.tokenizer, self.ids, self.skip_special_tokens)
        delta = new_text(now, self.emitted)
        self.emitted += delta
        return delta

    def finish(self) -> str:
        """Flush what was held back (trailing U+FFFD that no token completed)."""
        return self.add([], final=True)

    @property
    def text(self) -> str:
        return self.emitted
