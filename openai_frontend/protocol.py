"""OpenAI request bodies, their checks, and OpenAI's error format.

Every field of OpenAI's completions and chat completions requests is declared, so a field this front end
cannot honour is refused by name (a 400 whose `param` is the field) rather than silently ignored; a field
OpenAI does not have either is refused the same way ("Unrecognized request argument"), as OpenAI does.
The checks return a `Generation`: the sampling settings of one request in the engine's terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

MAX_SEED = 2**64 - 1  # random_seed is UINT64
MAX_PENALTY = 100.0  # the engine's bound on |penalties| (inflight_batcher.request.MAX_PENALTY)
MAX_N = 128  # choices per request: each is one engine request
MAX_STOPS = 16
MAX_STOP_CHARS = 1024


class OpenAIError(Exception):
    """An error answered in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    # Unknown fields are errors: a misspelled or unsupported knob must not be dropped without a word.
    model_config = ConfigDict(extra="forbid")

    model: str
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    # Extensions (vLLM's names): sampling knobs the engine has and OpenAI does not.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]]
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    # OpenAI fields of features this front end does not have: refused unless absent or neutral (NEUTRAL).
    audio: Any = None
    function_call: Any = None
    functions: Any = None
    modalities: Any = None
    moderation: Any = None
    parallel_tool_calls: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    response_format: Any = None
    store: Any = None
    tool_choice: Any = None
    tools: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    # Accepted and ignored: bookkeeping for OpenAI's service, no effect on the text.
    metadata: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None


# Field -> values that mean "not used"; any other value is a 400 naming the field, with the reason.
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "logit_bias": ((None, {}), "the engine has no per-token bias"),
    "suffix": ((None, ""), "no insertion (fill in the middle)"),
    "min_p": ((None, 0, 0.0), "the engine's sampler has no min-p filter"),
    "top_logprobs": ((None, 0), "the engine returns the log prob of the sampled token only"),
    "audio": ((None,), "text output only"),
    "function_call": ((None, "none"), "no function calling"),
    "functions": ((None, []), "no function calling"),
    "modalities": ((None, ["text"]), "text output only"),
    "moderation": ((None,), "no moderation"),
    "prediction": ((None,), "no predicted outputs"),
    "reasoning_effort": ((None,), "not a reasoning model"),
    "response_format": ((None, {"type": "text"}), "text only (no JSON mode or schemas: no guided decoding)"),
    "store": ((None, False), "completions are not stored"),
    "tool_choice": ((None, "none"), "no tool calling"),
    "tools": ((None, []), "no tool calling"),
    "verbosity": ((None,), "not a reasoning model"),
    "web_search_options": ((None,), "no web search"),
}


@dataclass
class Generation:
    """One request's settings in the engine's terms (the same for each of its choices)."""

    max_tokens: int | None  # None: up to the engine's max_seq_len
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage in every chunk


def _check_unsupported(req: BaseModel) -> None:
    for name, (neutral, reason) in UNSUPPORTED.items():
        if name in type(req).model_fields and getattr(req, name) not in neutral:
            raise OpenAIError(f"{name} is not supported: {reason}", param=name, code="unsupported_parameter")


def _range(name: str, value, lo=None, hi=None, lo_open: bool = False):
    if value is None:
        return None
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"<= {hi}"
        raise OpenAIError(f"{name}={value} is out of range: must be {' and '.join(s for s in (lo_s, hi_s) if s)}", name)
    return value


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise OpenAIError(f"{len(stops)} stop sequences, more than the limit of {MAX_STOPS}", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise OpenAIError(f"a stop sequence is longer than {MAX_STOP_CHARS} characters", "stop")
    return [s for s in stops if s]


def generation(req: CompletionRequest | ChatCompletionRequest) -> Generation:
    """Checks the fields common to both endpoints; returns the engine settings."""
    _check_unsupported(req)
    n = _range("n", req.n, lo=1, hi=MAX_N) or 1
    if isinstance(req, CompletionRequest) and req.best_of not in (None, n):
        raise OpenAIError("best_of other than n is not supported: choices are not ranked", "best_of")
    max_tokens = req.max_tokens
    name = "max_tokens"
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        max_tokens, name = req.max_completion_tokens, "max_completion_tokens"
    _range(name, max_tokens, lo=1)
    if max_tokens is None and isinstance(req, CompletionRequest):
        max_tokens = 16  # OpenAI's default for completions (chat has none: up to the context length)
    opts = dict(req.stream_options or {})
    if opts and not req.stream:
        raise OpenAIError("stream_options is only allowed when stream is true", "stream_options")
    for key in opts:
        if key not in ("include_usage", "continuous_usage_stats"):
            raise OpenAIError(f"stream_options.{key} is not supported", f"stream_options.{key}")
    seed = req.seed
    if seed is not None:
        seed %= MAX_SEED + 1  # OpenAI's seed is any integer; the engine's is UINT64
    top_k = _range("top_k", req.top_k, lo=-1)
    return Generation(
        max_tokens=max_tokens,
        temperature=_range("temperature", req.temperature, lo=0.0, hi=2.0) if req.temperature is not None else 1.0,
        top_p=_range("top_p", req.top_p, lo=0.0, hi=1.0, lo_open=True) if req.top_p is not None else 1.0,
        top_k=0 if top_k in (None, -1) else top_k,  # vLLM's -1 and OpenAI's absence both mean "no top-k"
        seed=seed,
        presence_penalty=_range("presence_penalty", req.presence_penalty, lo=-2.0, hi=2.0) or 0.0,
        frequency_penalty=_range("frequency_penalty", req.frequency_penalty, lo=-2.0, hi=2.0) or 0.0,
        repetition_penalty=_range("repetition_penalty", req.repetition_penalty, lo=0.0, hi=MAX_PENALTY, lo_open=True)
        or 1.0,
        min_tokens=_range("min_tokens", req.min_tokens, lo=0) or 0,
        ignore_eos=bool(req.ignore_eos),
        stop=_stops(req.stop),
        n=n,
        stream=bool(req.stream),
        include_usage=bool(opts.get("include_usage")),
        continuous_usage=bool(opts.get("include_usage")) and bool(opts.get("continuous_usage_stats")),
    )


def completion_generation(req: CompletionRequest) -> Generation:
    gen = generation(req)
    if req.logprobs is not None:
        _range("logprobs", req.logprobs, lo=0, hi=5)
        if req.logprobs > 0:
            raise OpenAIError(
                "logprobs > 0 is not supported: the engine returns the log prob of the sampled token only "
                "(use logprobs: 0)",
                "logprobs",
                code="unsupported_parameter",
            )
        gen.logprobs = True
    if req.echo and gen.logprobs:
        raise OpenAIError("echo with logprobs is not supported (no prompt log probs)", "echo")
    return gen


def chat_generation(req: ChatCompletionRequest) -> Generation:
    gen = generation(req)
    gen.logprobs = bool(req.logprobs)
    return gen


ROLES = {"system", "developer", "user", "assistant"}


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages -> what chat templates take: `{"role", "content": str}` (plus `name`)."""
    if not messages:
        raise OpenAIError("messages must not be empty", "messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            why = "tool calling is not supported" if role in ("tool", "function") else f"one of {sorted(ROLES)}"
            raise OpenAIError(f"messages[{i}].role={role!r}: {why}", f"messages[{i}].role")
        for key in m:
            if key not in ("role", "content", "name", "refusal") and m[key] is not None:
                raise OpenAIError(f"messages[{i}].{key} is not supported", f"messages[{i}].{key}")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise OpenAIError(
                        f"messages[{i}].content[{j}]: only text parts are supported", f"messages[{i}].content[{j}]"
                    )
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise OpenAIError(f"messages[{i}].content must be a string or a list of parts", f"messages[{i}].content")
        # Chat templates know system, user and assistant; OpenAI's "developer" is its system role.
        msg = {"role": "system" if role == "developer" else role, "content": content}
        if m.get("name") is not None:
            msg["name"] = m["name"]
        out.append(msg)
    return out
