"""`tensorrt_llm` model inputs -> in-flight batcher request arguments (spec section 2.2).

Works on plain numpy arrays (`inputs[name]`, each with the leading batch dimension Triton adds since
`max_batch_size > 0`), so it is unit-testable without Triton. Integer inputs are accepted as INT32 (v0.7+)
or UINT32 (v0.5 clients); Triton itself checks dtypes against the model config.

Every problem raises `InputError` with a message naming the input and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.interface import check_rejected
from backend.triton_utils import InputError
from inflight_batcher.request import checked_float, checked_int, parse_word_list


@dataclass
class EngineLimits:
    """What the engine was built for (from its config.json); None = unknown, not checked here."""

    vocab_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_beam_width: int = 1
    eos_token_id: int | None = None


@dataclass
class ParsedRow:
    """One batch row of a Triton request, ready to become an `inflight_batcher.Request`."""

    input_ids: list[int]
    max_new_tokens: int
    end_id: int | None
    pad_id: int | None
    sampling: dict
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    return_log_probs: bool = False
    return_perf_metrics: bool = False
    exclude_input_in_output: bool = False
    clipped_from: int | None = None  # max_new_tokens asked for, when clipped to the sequence limit
    num_return_sequences: int = 1  # beams returned (the best first), at most beam_width


@dataclass
class ParsedRequest:
    rows: list[ParsedRow]
    streaming: bool
    stop: bool


def _scalar(inputs: dict, name: str, b: int, default=None):
    a = inputs.get(name)
    if a is None:
        return default
    a = np.asarray(a)
    if a.size == 0:
        return default
    if a.ndim == 0:
        return a.item()
    if a.shape[0] <= b:
        raise InputError(f"input {name} has batch size {a.shape[0]}, expected at least {b + 1}")
    row = a[b].reshape(-1)
    if row.size == 0:
        return default
    return row[0].item()


def _int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    try:  # the batcher's check, so both layers hold the same rule and message
        return checked_int(name, v, lo, hi)
    except ValueError as e:
        raise InputError(str(e)) from None


def _float(name: str, v, lo: float | None = None, hi: float | None = None) -> float:
    try:
        return checked_float(name, v, lo, hi)
    except ValueError as e:
        raise InputError(str(e)) from None


def _bool(inputs: dict, name: str, b: int, default: bool = False) -> bool:
    v = _scalar(inputs, name, b, None)
    return default if v is None else bool(v)


def _words(inputs: dict, name: str, b: int) -> list[list[int]]:
    a = inputs.get(name)
    if a is None:
        return []
    a = np.asarray(a)
    if a.size == 0:
        return []
    if a.ndim == 2:  # one request without batch dim
        a = a[None]
    if a.ndim != 3 or a.shape[1] != 2:
        raise InputError(f"{name} must have shape [batch, 2, L], got {list(a.shape)}")
    try:
        return parse_word_list(a[b][0].tolist(), a[b][1].tolist())
    except ValueError as e:
        raise InputError(f"{name}: {e}") from None


def parse_request(inputs: dict, limits: EngineLimits, default_exclude_input: bool = False) -> ParsedRequest:
    """Validate and split one Triton request (all its batch rows)."""
    stop = False
    if inputs.get("stop") is not None and np.asarray(inputs["stop"]).size:
        stop = bool(np.asarray(inputs["stop"]).reshape(-1)[0])
    streaming = False
    if inputs.get("streaming") is not None and np.asarray(inputs["streaming"]).size:
        streaming = bool(np.asarray(inputs["streaming"]).reshape(-1)[0])
    if stop:
        return ParsedRequest(rows=[], streaming=streaming, stop=True)

    check_rejected(inputs.get, "tensorrt_llm")  # backend/interface.py: refused unless empty or neutral
    if inputs.get("input_ids") is None:
        raise InputError("input input_ids is required (encoder inputs are not supported)")
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise InputError(f"input_ids must have shape [batch, tokens], got {list(ids.shape)}")
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must hold integers, got {ids.dtype}")
    if inputs.get("request_output_len") is None:
        raise InputError("input request_output_len is required")
    batch = ids.shape[0]
    rows: list[ParsedRow] = []
    for b in range(batch):
        n = _scalar(inputs, "input_lengths", b, None)
        n = ids.shape[1] if n is None else _int("input_lengths", n, lo=0)
        if n > ids.shape[1]:
            raise InputError(f"input_lengths={n} is larger than input_ids' length {ids.shape[1]}")
        prompt = ids[b, :n].tolist()  # Python ints (an integer dtype is checked above)
        if not prompt:
            raise InputError("the prompt is empty (input_lengths = 0): at least one token is needed")
        if min(prompt) < 0 or (limits.vocab_size is not None and max(prompt) >= limits.vocab_size):
            bad = [t for t in prompt if t < 0 or (limits.vocab_size is not None and t >= limits.vocab_size)]
            raise InputError(f"input_ids holds token id {bad[0]}, outside the vocabulary [0, {limits.vocab_size})")
        if limits.max_input_len is not None and len(prompt) > limits.max_input_len:
            raise InputError(
                f"prompt has {len(prompt)} tokens, more than the engine's max_input_len {limits.max_input_len}"
            )
        max_new = _int("request_output_len", _scalar(inputs, "request_output_len", b), lo=1, hi=2**31 - 1)
        clipped_from = None
        if limits.max_seq_len is not None and len(prompt) + max_new > limits.max_seq_len:
            room = limits.max_seq_len - len(prompt)
            if room < 1:
                raise InputError(
                    f"prompt has {len(prompt)} tokens: no room left under max_seq_len {limits.max_seq_len}"
                )
            # Like TensorRT-LLM: the output is clipped to the engine's sequence limit, not rejected.
            clipped_from, max_new = max_new, room

        end_id = _scalar(inputs, "end_id", b, None)
        # Unset: the executor's default, which is every eos id of the engine, not only the first.
        end_id = None if end_id is None else _int("end_id", end_id, lo=-1)
        pad_id = _scalar(inputs, "pad_id", b, None)
        pad_id = None if pad_id is None else _int("pad_id", pad_id, lo=-1)

        beam = _int("beam_width", _scalar(inputs, "beam_width", b, 1), lo=1)
        if beam > limits.max_beam_width:
            raise InputError(f"beam_width={beam} is above the engine's max_beam_width {limits.max_beam_width}")
        nrs = _scalar(inputs, "num_return_sequences", b, None)
        nrs = beam if nrs is None else _int("num_return_sequences", nrs, lo=1)
        if nrs > beam:
            raise InputError(f"num_return_sequences={nrs} > beam_width={beam} is not supported (no parallel sampling)")
        early = _scalar(inputs, "early_stopping", b, None)
        early = None if early is None else _int("early_stopping", early, lo=0)
        if early is not None and early > 1 and beam > 1:
            raise InputError(f"early_stopping={early} is not supported: 0 (heuristic) or 1 (at beam_width finished)")
        seed = _scalar(inputs, "random_seed", b, None)
        temperature = _scalar(inputs, "temperature", b, None)
        sampling = dict(
            # Unset temperature (None) keeps the batcher's "no knob set -> greedy" rule.
            temperature=None if temperature is None else _float("temperature", temperature, lo=0.0),
            top_k=_int("runtime_top_k", _scalar(inputs, "runtime_top_k", b, 0), lo=0),
            top_p=_float("runtime_top_p", _scalar(inputs, "runtime_top_p", b, 0.0), lo=0.0, hi=1.0),
            min_length=_int("min_length", _scalar(inputs, "min_length", b, 0), lo=0),
            repetition_penalty=_float("repetition_penalty", _scalar(inputs, "repetition_penalty", b, 1.0)),
            presence_penalty=_float("presence_penalty", _scalar(inputs, "presence_penalty", b, 0.0)),
            frequency_penalty=_float("frequency_penalty", _scalar(inputs, "frequency_penalty", b, 0.0)),
            length_penalty=_float("len_penalty", _scalar(inputs, "len_penalty", b, 1.0)),
            beam_width=beam,
            early_stopping=bool(early) if early is not None and beam > 1 else None,
            random_seed=None if seed is None else _int("random_seed", seed, lo=0),
        )
        if sampling["repetition_penalty"] <= 0:
            raise InputError(f"repetition_penalty={sampling['repetition_penalty']} must be > 0")
        if streaming and beam > 1:
            raise InputError(f"streaming is not supported with beam_width={beam} (> 1)")
        rows.append(
            ParsedRow(
                input_ids=prompt,
                max_new_tokens=max_new,
                end_id=end_id,
                pad_id=pad_id,
                sampling=sampling,
                stop_words=_words(inputs, "stop_words_list", b),
                bad_words=_words(inputs, "bad_words_list", b),
                return_log_probs=_bool(inputs, "return_log_probs", b),
                return_perf_metrics=_bool(inputs, "return_perf_metrics", b),
                exclude_input_in_output=_bool(inputs, "exclude_input_in_output", b, default_exclude_input),
                clipped_from=clipped_from,
                num_return_sequences=nrs,
            )
        )
    return ParsedRequest(rows=rows, streaming=streaming, stop=False)
