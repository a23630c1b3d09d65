"""Completion text helpers: token texts and bytes for log probs, and stop strings. Token ids become text
with `backend.detokenizer.IncrementalDetokenizer` given the prompt (its first token is decoded in context,
so SentencePiece keeps its leading space, as vLLM and OpenAI return it)."""

from __future__ import annotations

from collections.abc import Sequence

from backend.detokenizer import byte_fallback_ids


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


_BYTE_LEVEL = {c: b for b, c in _bytes_to_unicode().items()}


class TokenText:
    """A token's text and exact bytes, for log probs: a byte-level token may hold part of a character,
    whose decoded text is only U+FFFD but whose bytes (OpenAI's `bytes` field) are known."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.byte_ids = byte_fallback_ids(tokenizer)
        # Skipped special tokens have no text, so that the tokens' bytes add up to the choice's text.
        self.hidden = set(tokenizer.all_special_ids) if skip_special_tokens else set()

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        if token_id in self.hidden:
            return "", b""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self.byte_ids:  # SentencePiece's "<0xNN>"
            return text, bytes([int(piece[3:5], 16)])
        if self.byte_level and piece is not None and all(c in _BYTE_LEVEL for c in piece):
            return text, bytes(_BYTE_LEVEL[c] for c in piece)
        if piece is not None and "▁" in piece:
            # SentencePiece: decoding one token strips its leading space; the piece keeps it.
            text = piece.replace("▁", " ")
        return text, text.encode("utf-8")


class StopMatcher:
    """Cuts a text stream at the first occurrence of any stop string, which is not returned.

    Text that could be the start of a stop string is held back until the next piece tells; `feed` returns
    what is safe to emit and whether a stop string was found (then the stream is over).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.pending + text
        # `pending` holds no complete stop string, so the first match is in `buf` and starts in it.
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """What was held back, at the end of a stream that met no stop string."""
        out, self.pending = self.pending, ""
        return out
