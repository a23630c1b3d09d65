"""Tokenizer loading, prompt checks, stop/bad word lists and embedding bias (the preprocessing logic)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from backend.triton_utils import InputError

if TYPE_CHECKING:
    import numpy.typing as npt
    from transformers import PreTrainedTokenizerBase

MAX_PROMPT_BYTES = 1 << 20  # a prompt this large is rejected before tokenizing (reliability.md 3)
MAX_WORD_BYTES = 4096  # one stop/bad word
MAX_WORDS = 1024  # words per list


def load_tokenizer(tokenizer_dir: str) -> PreTrainedTokenizerBase:
    """`AutoTokenizer` from a local directory only (no downloads); pad token := eos when missing."""
    from transformers import AutoTokenizer

    if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir!r} is not a directory")
    try:
        tok = AutoTokenizer.from_pretrained(
            tokenizer_dir, legacy=False, padding_side="left", trust_remote_code=True, local_files_only=True
        )
    except Exception as e:  # transformers raises many kinds; the user needs the path and the cause
        raise RuntimeError(f"cannot load a tokenizer from {tokenizer_dir!r}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def default_end_pad_ids(tok: PreTrainedTokenizerBase) -> tuple[int, int]:
    """First id of the encoded eos / pad token (the TensorRT-LLM preprocessing rule)."""

    def first_id(token: str | None) -> int | None:
        if token is None:
            return None
        ids = tok.encode(token, add_special_tokens=False)
        return int(ids[0]) if ids else None

    end = first_id(tok.eos_token)
    if end is None:
        end = int(tok.eos_token_id) if tok.eos_token_id is not None else 0
    pad = first_id(tok.pad_token)
    return end, end if pad is None else pad


def to_text(value: bytes | np.bytes_ | str, what: str) -> str:
    """A Triton BYTES element -> str; invalid UTF-8 (lone surrogates included) and NUL are rejected."""
    if isinstance(value, bytes | np.bytes_):
        if len(value) > MAX_PROMPT_BYTES:
            raise InputError(f"{what} is {len(value)} bytes, more than the limit of {MAX_PROMPT_BYTES}")
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    text = str(value)
    if "\x00" in text:
        raise InputError(f"{what} contains a NUL character")
    return text


def encode_prompt(tok: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = True) -> list[int]:
    if text == "":
        raise InputError("text_input is empty")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise InputError(f"text_input is longer than the limit of {MAX_PROMPT_BYTES} bytes")
    ids = tok.encode(text, add_special_tokens=add_special_tokens)
    if len(ids) == 0:
        raise InputError("text_input encodes to no tokens")
    return [int(i) for i in ids]


def flatten_words(arr: npt.ArrayLike | None) -> list[str]:
    """A `bad_words` / `stop_words` input: one word per element (v0.6+); empty strings mean no word."""
    if arr is None:
        return []
    words = [to_text(w, "stop/bad word") for w in np.asarray(arr, dtype=object).reshape(-1)]
    words = [w for w in words if w != ""]
    if len(words) > MAX_WORDS:
        raise InputError(f"{len(words)} stop/bad words, more than the limit of {MAX_WORDS}")
    for w in words:
        if len(w.encode("utf-8", "surrogatepass")) > MAX_WORD_BYTES:
            raise InputError(f"a stop/bad word is longer than the limit of {MAX_WORD_BYTES} bytes")
    return words


def word_list(tok: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[list[int], list[int]]:
    """(concatenated ids, cumulative end offsets) of words encoded without special tokens."""
    ids: list[int] = []
    offsets: list[int] = []
    for w in words:
        wi = tok.encode(w, add_special_tokens=False)
        if not wi:
            continue
        ids.extend(int(i) for i in wi)
        offsets.append(len(ids))
    return ids, offsets


def to_word_list_format(per_batch: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
    """`[B, 2, L]` INT32: row 0 ids 0-padded, row 1 cumulative offsets -1-padded (absent list: L = 0)."""
    width = max([max(len(ids), len(offs)) for ids, offs in per_batch] + [0])
    out = np.zeros((len(per_batch), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for b, (ids, offs) in enumerate(per_batch):
        out[b, 0, : len(ids)] = ids
        out[b, 1, : len(offs)] = offs
    return out


def embedding_bias(
    tok: PreTrainedTokenizerBase, words: Sequence[str], weights: Sequence[float], vocab_size: int
) -> np.ndarray:
    """Vocab-sized FP32 vector summing each word's weight at its token ids."""
    if len(words) != len(weights):
        raise InputError(f"{len(words)} embedding_bias_words but {len(weights)} embedding_bias_weights")
    bias = np.zeros(vocab_size, dtype=np.float32)
    for w, wt in zip(words, weights, strict=True):
        for i in tok.encode(w, add_special_tokens=False):
            bias[i] += wt
    return bias
