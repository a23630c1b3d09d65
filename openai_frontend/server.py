"""The HTTP side: FastAPI routes, server-sent events, OpenAI's response objects and errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import tritonclient.grpc.aio as grpcclient
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from tritonclient.utils import InferenceServerException

from openai_frontend.discovery import Discovery, ServedModel
from openai_frontend.engine import EngineError, TritonEngine
from openai_frontend.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Generation,
    OpenAIError,
    chat_generation,
    chat_messages,
    completion_generation,
)
from openai_frontend.serving import Choice, Generator, Piece, check_prompt, encode_prompt, make_choices, merged

log = logging.getLogger("openai_frontend")
# The models of TensorRT-LLM's repository, by the names its templates give them.
CONVENTIONAL_MODELS = ("ensemble", "tensorrt_llm_bls", "tensorrt_llm", "preprocessing", "postprocessing")
OWNER = "tensorrt_llm_triton"


class FrontEnd:
    """The state shared by all requests: tritonserver's clients and the served models."""

    def __init__(
        self,
        grpc_url: str,
        metrics_url: str | None,
        tokenizer_dir: str | None = None,
        default_max_tokens: int | None = None,
        prompt_tokens_details: bool = False,
    ):
        self.grpc_url, self.metrics_url = grpc_url, metrics_url
        self.default_max_tokens = default_max_tokens
        self.prompt_tokens_details = prompt_tokens_details
        self.discovery = Discovery(tokenizer_dir)
        self.models: dict[str, ServedModel] = {}
        self.created = int(time.time())
        self.control: grpcclient.InferenceServerClient | None = None
        self.engine: TritonEngine | None = None
        self._refresh_lock = asyncio.Lock()
        self._refreshed = 0.0
        # The launcher restricts tritonserver's repository API to a key of its own (a gRPC "header=value" in
        # the environment it starts this front end with; scripts/stub_watchdog.py); none for other servers.
        key = os.environ.get("TRTLLM_REPOSITORY_KEY", "")
        self.repository_headers = dict([key.split("=", 1)]) if "=" in key else None

    async def start(self, timeout: float = 300.0) -> None:
        self.control = grpcclient.InferenceServerClient(self.grpc_url)
        self.engine = TritonEngine(self.grpc_url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.control.is_server_ready():
                    break
            except Exception as e:  # tritonclient raises its own exception types for an unreachable server
                last = e
            else:
                last = "not ready"
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver at {self.grpc_url} not ready after {timeout:.0f} s: {last}")
            await asyncio.sleep(0.5)
        await self.refresh()
        if not self.models:
            log.warning("no text model to serve found in tritonserver's repository (see --tokenizer_dir)")
        log.info("serving %s (engine models: %s)", sorted(self.models), {m.engine_model for m in self.models.values()})

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        if self.control is not None:
            await self.control.close()

    async def refresh(self, min_interval: float = 0.0) -> None:
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed < min_interval:
                return
            self._refreshed = time.monotonic()
            try:
                index = await self.control.get_model_repository_index(headers=self.repository_headers, as_json=True)
                ready = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
            except InferenceServerException as e:
                if "restricted" not in str(e):
                    raise
                # A launcher's server keeps its repository API to itself (a front end started on its own has
                # not its key): the repository's models under their conventional names, those that are ready.
                ready = [m for m in CONVENTIONAL_MODELS if await self.control.is_model_ready(m)]
            configs = {}
            for name in ready:
                configs[name] = (await self.control.get_model_config(name, as_json=True))["config"]
            # Loading a tokenizer takes a while: off the event loop.
            self.models = await asyncio.to_thread(self.discovery.served, configs)
            if self.prompt_tokens_details:
                for m in self.models.values():
                    if not m.reports_reuse:
                        log.warning(
                            "model %r: no prompt_tokens_details (its engine model %r does not declare "
                            "kv_cache_reused_blocks, or its engine's config.json is not readable here)",
                            m.name,
                            m.engine_model,
                        )

    async def model(self, name: str) -> ServedModel:
        if name not in self.models:
            await self.refresh(min_interval=5.0)  # loaded since the last look? (not once per bad request)
        if name not in self.models:
            raise OpenAIError(
                f"The model {name!r} does not exist; served: {sorted(self.models)}",
                "model",
                status=404,
                code="model_not_found",
            )
        return self.models[name]


def _error(e: OpenAIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _engine_error(e: EngineError) -> OpenAIError:
    if e.unavailable:
        return OpenAIError(str(e), status=503, type="server_error")
    if e.before_output:
        # Refused before any output: the request (a length, a value) is what the engine could not take.
        return OpenAIError(str(e), status=400)
    return OpenAIError(str(e), status=500, type="server_error")


def _usage(choices: list[Choice], n: int) -> dict:
    prompt = sum(len(c.prompt_ids) for c in choices[::n])  # each prompt once, however many choices
    completion = sum(c.completion_tokens for c in choices)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    # vLLM's --enable-prompt-tokens-details (OpenAI's prompt caching field): each prompt's cached tokens once,
    # the most any of its choices found (choices are grouped by prompt, n each)
    if any(c.cached_tokens is not None for c in choices):
        groups = [choices[i : i + n] for i in range(0, len(choices), n)]
        cached = sum(max(c.cached_tokens or 0 for c in g) for g in groups)
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is read: the next message can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable) -> Any:
    """Runs `work`, cancelling it (and so its engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            # Wait for the cancellation to go through: it closes the engine streams on its way out.
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return Response(status_code=499)  # nobody reads it
    return task.result()


def _completion_logprobs(pieces_lp: list) -> dict:
    return {
        "tokens": [t.token for t in pieces_lp],
        "token_logprobs": [t.logprob for t in pieces_lp],
        "top_logprobs": None,
        "text_offset": [t.offset for t in pieces_lp],
    }


def _chat_logprobs(pieces_lp: list) -> dict:
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes), "top_logprobs": []} for t in pieces_lp
        ],
        "refusal": None,
    }


class Endpoint:
    """One request of either endpoint: its choices, run to a JSON answer or a stream of events."""

    def __init__(self, fe: FrontEnd, served: ServedModel, gen: Generation, choices: list[Choice], chat: bool):
        self.fe, self.served, self.gen, self.choices, self.chat = fe, served, gen, choices, chat
        self.generator = Generator(fe.engine, served, gen, fe.default_max_tokens, fe.prompt_tokens_details)
        self.id = ("chatcmpl-" if chat else "cmpl-") + self.generator.request_id
        self.created = int(time.time())

    def _pieces(self) -> AsyncIterator[Piece]:
        return merged([self.generator.run(c) for c in self.choices])

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name}

    async def answer(self) -> JSONResponse:
        texts = {c.index: [] for c in self.choices}
        lps: dict[int, list] = {c.index: [] for c in self.choices}
        finish: dict[int, str | None] = {}
        try:
            async with contextlib.aclosing(self._pieces()) as pieces:
                async for p in pieces:
                    texts[p.index].append(p.text)
                    lps[p.index].extend(p.logprobs or [])
                    if p.finish_reason:
                        finish[p.index] = p.finish_reason
        except EngineError as e:
            return _error(_engine_error(e))
        choices = []
        for c in self.choices:
            text = "".join(texts[c.index])
            if self.chat:
                lp = _chat_logprobs(lps[c.index]) if self.gen.logprobs else None
                choices.append(
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": lp,
                        "finish_reason": finish.get(c.index),
                    }
                )
            else:
                lp = _completion_logprobs(lps[c.index]) if self.gen.logprobs else None
                choices.append({"index": c.index, "text": text, "logprobs": lp, "finish_reason": finish.get(c.index)})
        body = {
            **self._head("chat.completion" if self.chat else "text_completion"),
            "choices": choices,
            "usage": _usage(self.choices, self.gen.n),
        }
        return JSONResponse(body)

    def _event(self, p: Piece, obj: str, usage: dict) -> str:
        if self.chat:
            lp = _chat_logprobs(p.logprobs) if self.gen.logprobs else None
            delta = {"content": p.text} if p.text or not p.finish_reason else {}
            choice = {"index": p.index, "delta": delta, "logprobs": lp, "finish_reason": p.finish_reason}
        else:
            lp = _completion_logprobs(p.logprobs) if self.gen.logprobs else None
            choice = {"index": p.index, "text": p.text, "logprobs": lp, "finish_reason": p.finish_reason}
        if self.gen.continuous_usage:
            usage = {"usage": _usage(self.choices, self.gen.n)}
        return _sse({**self._head(obj), "choices": [choice], **usage})

    async def events(self, pieces: AsyncIterator[Piece], first: Piece | None) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        usage = {"usage": None} if self.gen.include_usage else {}
        async with contextlib.aclosing(pieces):
            if self.chat:  # OpenAI's first event of each choice: the role
                for c in self.choices:
                    choice = {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
                    yield _sse({**self._head(obj), "choices": [{**choice, "finish_reason": None}], **usage})
            if first is not None:
                yield self._event(first, obj, usage)
            try:
                async for p in pieces:
                    yield self._event(p, obj, usage)
            except EngineError as e:
                # The answer started with 200 already: the error is an event, as OpenAI sends it.
                yield _sse(_engine_error(e).body())
                return
        if self.gen.include_usage:
            yield _sse({**self._head(obj), "choices": [], "usage": _usage(self.choices, self.gen.n)})
        yield "data: [DONE]\n\n"

    async def respond(self, request: Request) -> Response:
        if not self.gen.stream:
            return await _unless_disconnected(request, self.answer())
        # The first piece before the 200: an engine that refuses the request gets a plain 400 answered.
        pieces = self._pieces()
        try:
            first = await _unless_disconnected(request, anext(pieces, None))
        except EngineError as e:
            await pieces.aclose()
            return _error(_engine_error(e))
        if isinstance(first, Response):  # the client left already
            await pieces.aclose()
            return first
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        # Starlette cancels the events when the client disconnects; that closes the engine streams.
        return StreamingResponse(self.events(pieces, first), media_type="text/event-stream", headers=headers)


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    err = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = loc[0] if loc else None
    if err.get("type") == "extra_forbidden":
        return OpenAIError(f"Unrecognized request argument supplied: {param}", param)
    if err.get("type") == "json_invalid":
        return OpenAIError(f"The request body is not valid JSON: {err.get('msg')}")
    where = ".".join(loc) or "body"
    return OpenAIError(f"{where}: {err.get('msg', 'invalid value')}", param)


def create_app(fe: FrontEnd, startup_timeout: float = 300.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await fe.start(startup_timeout)
        # The startup heap (FastAPI, tokenizers, transformers) lives as long as the worker: out of the
        # collector's reach, as in the engine process (where a full collection had stopped a step ~150 ms).
        gc.collect()
        gc.freeze()
        yield
        await fe.stop()

    app = FastAPI(title="OpenAI-compatible API over tritonserver", lifespan=lifespan)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(OpenAIError(str(exc.detail), status=exc.status_code))

    @app.get("/health")
    async def health() -> Response:
        try:
            ready = await fe.control.is_server_ready() and all(
                [await fe.control.is_model_ready(m) for m in {s.engine_model for s in fe.models.values()}]
            )
        except Exception:  # unreachable server: not healthy, whatever tritonclient raised
            ready = False
        return Response(status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if not fe.metrics_url:
            raise OpenAIError("no --triton_metrics_url given", status=404)

        def fetch() -> bytes:
            with urllib.request.urlopen(fe.metrics_url, timeout=10) as r:
                return r.read()

        try:
            body = await asyncio.to_thread(fetch)
        except (urllib.error.URLError, OSError) as e:
            raise OpenAIError(
                f"tritonserver's metrics at {fe.metrics_url}: {e}", status=503, type="server_error"
            ) from None
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": fe.created, "owned_by": OWNER}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(n) for n in sorted(fe.models)]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        return _model_card((await fe.model(name)).name)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        served = await fe.model(body.model)
        gen = completion_generation(body)
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise OpenAIError("prompt must not be empty", "prompt")
        ids = []
        for p in prompts:
            if isinstance(p, str):
                p = encode_prompt(served, p, served.add_special_tokens, "prompt")
            elif not p:
                raise OpenAIError("prompt must not be empty", "prompt")
            check_prompt(served, p, "prompt")
            ids.append(list(p))
        prefixes = None
        if body.echo:
            prefixes = [
                p if isinstance(p, str) else served.tokenizer.decode(i, skip_special_tokens=served.skip_special_tokens)
                for p, i in zip(prompts, ids, strict=True)
            ]
        endpoint = Endpoint(fe, served, gen, make_choices(ids, gen, prefixes), chat=False)
        return await endpoint.respond(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        served = await fe.model(body.model)
        gen = chat_generation(body)
        messages = chat_messages(body.messages)
        tok = served.tokenizer
        if not getattr(tok, "chat_template", None):
            raise OpenAIError(
                f"model {served.name!r} has no chat template (no chat_template in its tokenizer's "
                "tokenizer_config.json): use /v1/completions, or add a template",
                "messages",
                code="chat_template_missing",
            )
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own errors (raise_exception: "roles must alternate", ...)
            raise OpenAIError(f"the chat template failed on these messages: {e}", "messages") from None
        # The template writes the special tokens (BOS) itself, as transformers' apply_chat_template assumes.
        ids = encode_prompt(served, text, False, "messages")
        check_prompt(served, ids, "messages")
        endpoint = Endpoint(fe, served, gen, make_choices([ids], gen), chat=True)
        return await endpoint.respond(request)

    return app
