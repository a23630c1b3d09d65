"""Requests, sampling parameters and outputs of the in-flight batcher.

A `Request` is what a caller builds (the backend, a test, a tool). Its parameters are checked in two
places, both before the request is queued, so a bad value fails that request alone:
- `SamplingParams.__post_init__` and `Request.__post_init__`: checks that need no engine (types, ranges);
- `validate_request(request, limits)`: checks against the engine (vocabulary, lengths, beam width).

Every check raises `ValueError` whose message names the field and the bad value.

The executor keeps per-request state on the same object (fields below the `# -- executor state --`
line); callers never set them. Tokens are kept per beam in `Sequence` objects.
"""

from __future__ import annotations

import enum
import functools
import math
import numbers
from collections.abc import Callable
from collections.abc import Sequence as SeqABC
from dataclasses import dataclass, field

# Guards against requests that would only waste memory or time (reliability.md, bad inputs 4 and 8).
MAX_WORDS = 256  # stop words or bad words per request
MAX_WORD_TOKENS = 64  # tokens in one stop word / bad word
MAX_PENALTY = 100.0  # |presence_penalty|, |frequency_penalty|, repetition_penalty
MAX_SEED = 2**64 - 1


class RequestStatus(enum.IntEnum):
    """Lifecycle of a request; ordered, so `status >= FINISHED_END_ID` means finished."""

    WAITING = 0  # queued, holds no KV blocks
    RUNNING = 1  # admitted: holds blocks, scheduled every step
    PAUSED = 2  # preempted (max_utilization): blocks freed, recomputes prompt + generated on resume
    FINISHED_END_ID = 3
    FINISHED_STOP_WORDS = 4
    FINISHED_LENGTH = 5
    FINISHED_CANCELLED = 6
    FINISHED_ERROR = 7

    @property
    def finished(self) -> bool:
        # The plain value: comparing enum members looks the member up through the enum's metaclass, and this
        # runs for every row of every step.
        return self._value_ >= _FINISHED_FROM

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISHED_FROM = RequestStatus.FINISHED_END_ID.value  # every status from this one on is a finished one
_FINISH_REASONS = {
    RequestStatus.FINISHED_END_ID: "end_id",
    RequestStatus.FINISHED_STOP_WORDS: "stop_words",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_CANCELLED: "cancelled",
    RequestStatus.FINISHED_ERROR: "error",
}


def checked_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as a Python int, or ValueError naming `name`. Floats (even 3.0) and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    v = int(value)
    if lo is not None and v < lo:
        raise ValueError(f"{name}={v} is out of range: must be >= {lo}")
    if hi is not None and v > hi:
        raise ValueError(f"{name}={v} is out of range: must be <= {hi}")
    return v


def checked_ids(name: str, values: SeqABC) -> list[int]:
    """Token ids as a list of Python ints >= 0, or ValueError naming the first bad one. Lists of plain
    ints (what the parsers make) are checked in one pass: per-element `checked_int` cost ~1 µs a token,
    200 µs of GIL for a 170-token prompt, taken from the executor thread at every arrival."""
    if all(type(t) is int for t in values):
        if not values or min(values) >= 0:
            return list(values)  # a copy: the caller keeps its list
        i = next(i for i, t in enumerate(values) if t < 0)
        raise ValueError(f"{name}[{i}]={values[i]} is out of range: must be >= 0")
    return [checked_int(f"{name}[{i}]", t, lo=0) for i, t in enumerate(values)]


def checked_float(name: str, value: object, lo: float | None = None, hi: float | None = None) -> float:
    """`value` as a finite Python float, or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}={v} is not a finite number")
    if lo is not None and v < lo:
        raise ValueError(f"{name}={v} is out of range: must be >= {lo}")
    if hi is not None and v > hi:
        raise ValueError(f"{name}={v} is out of range: must be <= {hi}")
    return v


@dataclass
class SamplingParams:
    """Decoding parameters, with TensorRT-LLM's meanings (spec/triton_interface.md §2.2).

    Greedy rule (the project's one, `tensorrt_llm.runtime.sampling.is_greedy`): greedy when
    `temperature == 0` or `top_k == 1`, or when no knob is set (temperature None, top_k 0, top_p 0).
    A temperature that is set samples from the whole vocabulary; `top_p == 0` means "no top-p".
    Repetition penalty applies to prompt + generated tokens; presence and frequency penalties to
    generated tokens only (OpenAI / vLLM convention). `length_penalty` is used by beam search only.
    """

    temperature: float | None = None
    top_k: int = 0
    top_p: float = 0.0
    min_length: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    length_penalty: float = 1.0
    beam_width: int = 1
    early_stopping: bool | None = None
    """Beam search: True ends when beam_width hypotheses have finished (TensorRT-LLM's early_stopping=1);
    None or False ends when no live beam can beat the worst finished one (Hugging Face's heuristic)."""
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None:
            self.temperature = checked_float("temperature", self.temperature, lo=0.0)
        self.top_k = checked_int("top_k", self.top_k, lo=0)
        self.top_p = checked_float("top_p", self.top_p, lo=0.0, hi=1.0)
        self.min_length = checked_int("min_length", self.min_length, lo=0)
        self.repetition_penalty = checked_float("repetition_penalty", self.repetition_penalty, hi=MAX_PENALTY)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} is out of range: must be > 0")
        self.presence_penalty = checked_float("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        self.frequency_penalty = checked_float("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        self.length_penalty = checked_float("length_penalty", self.length_penalty, -MAX_PENALTY, MAX_PENALTY)
        self.beam_width = checked_int("beam_width", self.beam_width, lo=1)
        if self.random_seed is not None:
            self.random_seed = checked_int("random_seed", self.random_seed, lo=0, hi=MAX_SEED)

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (after penalties and masks)."""
        if self.temperature == 0.0 or self.top_k == 1:
            return True
        return self.temperature is None and self.top_k == 0 and self.top_p == 0.0


def _as_list(value: object) -> object:
    """numpy arrays and torch tensors as Python lists (their items are not `numbers.Integral`)."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, str | bytes) else value


def _word_list(name: str, words: object) -> list[list[int]]:
    if words is None:
        return []
    words = _as_list(words)
    if not isinstance(words, SeqABC) or isinstance(words, str | bytes):
        raise ValueError(f"{name} must be a list of token id lists, got {type(words).__name__}")
    if len(words) > MAX_WORDS:
        raise ValueError(f"{name} has {len(words)} words; at most {MAX_WORDS} are allowed")
    out = []
    for i, w in enumerate(words):
        if not isinstance(w, SeqABC) or isinstance(w, str | bytes):
            raise ValueError(f"{name}[{i}] must be a list of token ids, got {type(w).__name__}")
        if not 1 <= len(w) <= MAX_WORD_TOKENS:
            raise ValueError(f"{name}[{i}] has {len(w)} tokens; must have 1..{MAX_WORD_TOKENS}")
        out.append([checked_int(f"{name}[{i}][{j}]", t, lo=0) for j, t in enumerate(w)])
    return out


def parse_word_list(flat_ids: SeqABC[int], offsets: SeqABC[int]) -> list[list[int]]:
    """One row of TensorRT-LLM's `[2, L]` word-list format -> a list of words.

    Row 0 holds the words' ids back to back, row 1 the cumulative end offset of each word, both padded
    with -1 (spec/triton_interface.md §2.1). E.g. ([5, 6, 7, -1], [2, 3, -1, -1]) -> [[5, 6], [7]].
    """
    words, start = [], 0
    for end in offsets:
        end = int(end)
        if end < 0:
            break
        if end <= start or end > len(flat_ids):
            raise ValueError(f"word list offsets {list(offsets)} are not increasing within {len(flat_ids)}")
        words.append([int(t) for t in flat_ids[start:end]])
        start = end
    return words


@dataclass(eq=False)
class Sequence:
    """One beam's tokens and KV blocks. A request without beam search has exactly one."""

    tokens: list[int]  # prompt + generated (the prompt is repeated per beam; beams fork after it)
    block_table: list[int] = field(default_factory=list)
    cum_log_prob: float = 0.0
    log_probs: list[float] = field(default_factory=list)  # one per generated token
    parent: int = -1  # beam search: index of the beam this one continued, in the previous step
    # Prefix reuse: chain keys of the leading blocks of `block_table` that are published (findable).
    block_keys: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Request:
    """One generation request. Fields above the marker are the caller's; the executor owns the rest.

    `end_id=None` takes the engine's eos ids (all of them: a checkpoint may list several, as Llama-3
    instruct's `<|end_of_text|>` and `<|eot_id|>`); `end_id=-1` never stops on a token. `end_ids` adds more
    ids that end the request as `end_id` does. `pad_id=None` is `end_id`. The output never contains an end
    id token (TensorRT-LLM's convention); it does contain the stop word that ended it.
    `exclude_input_in_output` is carried for the backend: `Output.tokens` never hold the prompt.
    `callback(Output)` is called on the executor thread and must not block.
    """

    input_ids: list[int]
    max_new_tokens: int = 16
    end_id: int | None = None
    pad_id: int | None = None
    end_ids: list[int] | None = None
    streaming: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_words: list[list[int]] | None = None
    bad_words: list[list[int]] | None = None
    return_log_probs: bool = False
    return_perf_metrics: bool = False
    exclude_input_in_output: bool = False
    client_id: object = None
    callback: Callable[[Output], None] | None = None

    # -- executor state --
    request_id: int | None = field(default=None, init=False)
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    # Invariant: all live beams have the same length; `num_computed_tokens` of their tokens have KV
    # in the cache. A step computes tokens [num_computed_tokens, num_tokens) (or a chunk of them), and
    # samples the next token once num_computed_tokens == num_tokens. So context phase, generation phase
    # and resume-by-recompute after a pause are the same thing.
    seqs: list[Sequence] = field(default_factory=list, init=False, repr=False)
    num_computed_tokens: int = field(default=0, init=False)
    num_streamed: int = field(default=0, init=False)  # generated tokens already sent in callbacks
    # Overlapped steps: the last `num_pending` tokens of seqs[0] are placeholders for tokens sampled
    # on the GPU but not yet read by the host (the executor schedules the next step meanwhile).
    num_pending: int = field(default=0, init=False)
    num_preemptions: int = field(default=0, init=False)
    # LongRoPE engines: whether this request's KV was computed with the long factors (it was longer than the
    # original context then); one that grows past it is computed again with them (Scheduler.longrope_from).
    kv_rope_long: bool = field(default=False, init=False, repr=False)
    # Beam search: finished hypotheses (score, beam), best first, at most beam_width; and whether a live
    # beam may still beat the worst of them (Hugging Face's early-stop heuristic, sticky once False).
    finished_beams: list[tuple[float, Sequence]] = field(default_factory=list, init=False, repr=False)
    beam_improvable: bool = field(default=True, init=False, repr=False)
    error: str | None = field(default=None, init=False)
    perf: PerfMetrics = field(default_factory=lambda: PerfMetrics(), init=False, repr=False)
    seed: int = field(default=0, init=False, repr=False)  # sampling noise seed: random_seed, or drawn at enqueue
    # Every token id that ends this request (end_id and end_ids, -1 left out); set at enqueue.
    end_set: frozenset = field(default=frozenset(), init=False, repr=False)
    # The KV blocks the scheduler reserves for the request's whole length (guaranteed_no_evict, beams);
    # -1 until the scheduler first needs it (Scheduler.reserved).
    reserve: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        self.input_ids = _as_list(self.input_ids)
        if not isinstance(self.input_ids, SeqABC) or isinstance(self.input_ids, str | bytes):
            raise ValueError(f"input_ids must be a list of token ids, got {type(self.input_ids).__name__}")
        if len(self.input_ids) == 0:
            raise ValueError("input_ids is empty: a prompt needs at least one token")
        self.input_ids = checked_ids("input_ids", self.input_ids)
        self.max_new_tokens = checked_int("max_new_tokens", self.max_new_tokens, lo=1)
        if self.end_id is not None:
            self.end_id = checked_int("end_id", self.end_id, lo=-1)
        if self.pad_id is not None:
            self.pad_id = checked_int("pad_id", self.pad_id, lo=-1)
        if self.end_ids is not None:
            self.end_ids = [checked_int(f"end_ids[{i}]", t, lo=0) for i, t in enumerate(_as_list(self.end_ids))]
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"sampling must be SamplingParams, got {type(self.sampling).__name__}")
        self.stop_words = _word_list("stop_words", self.stop_words)
        self.bad_words = _word_list("bad_words", self.bad_words)
        for name in ("streaming", "return_log_probs", "return_perf_metrics", "exclude_input_in_output"):
            v = getattr(self, name)
            if hasattr(v, "item") and isinstance(v.item(), bool):  # numpy.bool_ from a Triton tensor
                v = v.item()
                setattr(self, name, v)
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a bool, got {v!r}")
        if self.streaming and self.sampling.beam_width > 1:
            # Beams reorder, so "new tokens since the last callback" has no meaning per beam.
            raise ValueError(f"streaming is not supported with beam_width={self.sampling.beam_width} (> 1)")
        if self.callback is not None and not callable(self.callback):
            raise ValueError("callback must be callable")

    # -- counters --
    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt + generated tokens of each live beam."""
        return len(self.seqs[0].tokens) if self.seqs else self.prompt_len

    @property
    def num_generated(self) -> int:
        """Generated tokens, placeholders of steps still in flight included."""
        return self.num_tokens - self.prompt_len

    @property
    def num_resolved(self) -> int:
        """Generated tokens the host has read (placeholders excluded)."""
        return self.num_generated - self.num_pending

    @functools.cached_property
    def overlappable(self) -> bool:
        """Whether the next step may be scheduled before this request's last token is known: its
        sampling then must not read token values (penalties, multi-token bad words) and its beams must
        not reorder. Fixed for the request's life (asked for every row of every step)."""
        sp = self.sampling
        return (
            not self.is_beam_search
            and sp.repetition_penalty == 1.0
            and sp.presence_penalty == 0.0
            and sp.frequency_penalty == 0.0
            and all(len(w) == 1 for w in self.bad_words)
        )

    @functools.cached_property
    def sampling_row(self) -> tuple[float, int, float, float, float, float]:
        """(temperature, top_k, top_p, repetition, presence, frequency penalties) of this request's sampling
        rows, fixed for its life: beam rows are greedy (top-k/p and temperature do not apply to beams)."""
        sp, beam = self.sampling, self.is_beam_search
        return (0.0 if beam else sp.temperature, 0 if beam else sp.top_k, 0.0 if beam else sp.top_p,
                sp.repetition_penalty, sp.presence_penalty, sp.frequency_penalty)  # fmt: skip

    @property
    def beam_width(self) -> int:
        return self.sampling.beam_width

    @property
    def is_beam_search(self) -> bool:
        return self.sampling.beam_width > 1

    @property
    def num_live_beams(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True)
class Limits:
    """What the engine and executor accept; the checks of `validate_request` come from here."""

    vocab_size: int
    max_input_len: int
    max_seq_len: int
    max_beam_width: int
    max_batch_size: int
    max_num_tokens: int
    enable_chunked_context: bool


def validate_request(req: Request, limits: Limits) -> None:
    """Raise ValueError if `req` cannot run on this engine. Never mutates `req`."""
    v = limits.vocab_size
    if req.input_ids and max(req.input_ids) >= v:
        i, t = next((i, t) for i, t in enumerate(req.input_ids) if t >= v)
        raise ValueError(f"input_ids[{i}]={t} is out of range: token ids must be < vocab_size={v}")
    n = req.prompt_len
    if n > limits.max_input_len:
        raise ValueError(f"prompt has {n} tokens, more than max_input_len={limits.max_input_len}")
    if n + req.max_new_tokens > limits.max_seq_len:
        # Rejected, not clipped: a client asking for 2**31 tokens gets told, not silently shortened.
        raise ValueError(
            f"max_new_tokens={req.max_new_tokens} with a prompt of {n} tokens exceeds "
            f"max_seq_len={limits.max_seq_len} (at most {max(limits.max_seq_len - n, 0)} new tokens)"
        )
    if not limits.enable_chunked_context and n > limits.max_num_tokens:
        raise ValueError(
            f"prompt has {n} tokens, more than max_num_tokens={limits.max_num_tokens} per step "
            "and chunked context is off"
        )
    bw = req.sampling.beam_width
    if bw > limits.max_beam_width:
        raise ValueError(f"beam_width={bw} is out of range: max_beam_width is {limits.max_beam_width}")
    if bw > limits.max_batch_size:
        raise ValueError(f"beam_width={bw} is more than max_batch_size={limits.max_batch_size}")
    for name in ("end_id", "pad_id"):
        t = getattr(req, name)
        if t is not None and t >= v:
            raise ValueError(f"{name}={t} is out of range: token ids must be < vocab_size={v}")
    for name in ("stop_words", "bad_words"):
        for i, w in enumerate(getattr(req, name)):
            for j, t in enumerate(w):
                if t >= v:
                    raise ValueError(f"{name}[{i}][{j}]={t} is out of range: must be < vocab_size={v}")


@dataclass
class PerfMetrics:
    """One request's KV-cache use and timeline, as TensorRT-LLM's `return_perf_metrics` reports them.

    Blocks are counted over the request's life, every beam and every resume after a pause included:
    `kv_alloc_total_blocks` were allocated for it (reused blocks are not), `kv_alloc_new_blocks` of them
    were blank (the rest evicted a cached block), `kv_reused_blocks` were found in the prefix cache.
    Times are nanoseconds since the epoch (0: not yet)."""

    kv_alloc_new_blocks: int = 0
    kv_reused_blocks: int = 0
    kv_alloc_total_blocks: int = 0
    arrival_time_ns: int = 0
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0


class ListPrefix(SeqABC):
    """`items[start:end]` of a list whose first `end` items never change (a request's resolved tokens, its
    log-probs), copied only when read: a streamed output's `tokens` would otherwise copy everything generated
    so far at every step (O(length) per request per step), for consumers that read only `new_tokens`."""

    __slots__ = ("_items", "_start", "_end")

    def __init__(self, items: list, start: int, end: int):
        self._items, self._start, self._end = items, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step > 0:  # straight from the list: x[-k:] copies k items, not the whole prefix
                return self._items[self._start + start : self._start + max(start, stop) : step]
            return self._items[self._start : self._end][i]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("ListPrefix index out of range")
        return self._items[self._start + (i % n)]

    def __iter__(self):
        return iter(self._items[self._start : self._end])

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, ListPrefix)) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(slots=True)  # one per streamed row per step: slots make it ~40 % cheaper to build
class Output:
    """What a callback receives. Lists are per beam; `tokens` never include the prompt. In a streamed output
    that is not the last, `tokens` and `log_probs` may be `ListPrefix` views (read-only sequences) rather than
    lists."""

    request_id: int
    new_tokens: list[list[int]]  # per beam, tokens since the last callback
    tokens: list[list[int]]  # per beam, all generated so far
    finished: bool = False
    finish_reason: str | None = None  # "end_id" | "stop_words" | "length" | "cancelled" | "error"
    error: str | None = None
    cum_log_probs: list[float] | None = None  # per beam, when return_log_probs
    log_probs: list[list[float]] | None = None  # per beam, one per token of `tokens`
    client_id: object = None
    perf: PerfMetrics | None = None  # a copy, when return_perf_metrics
