"""One engine request over tritonserver's gRPC streaming API (`ModelStreamInfer`), as an async iterator.

One bidirectional stream per request: cancelling the stream (the client went away, a stop string was met)
is Triton's request cancellation, which the `tensorrt_llm` backend turns into stopping the request in the
engine. The requests are built from the generated protobuf messages directly (not `tritonclient`'s request
helpers) to ask for Triton's empty final response, which says without doubt when a request is over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from openai_frontend.protocol import Generation

MAX_MESSAGE = 2**31 - 1
MAX_WORD_TOKENS = 64  # the engine's limit on one stop word (inflight_batcher.request.MAX_WORD_TOKENS)
NO_LIMIT = 2**31 - 1  # request_output_len when no limit is known: the engine clips it to max_seq_len


class EngineError(Exception):
    """The engine (or tritonserver) answered the request with an error."""

    def __init__(self, message: str, unavailable: bool = False, before_output: bool = False):
        super().__init__(message)
        self.unavailable = unavailable  # tritonserver could not be reached at all
        self.before_output = before_output  # the request was refused: no token had come


@dataclass
class EngineRequest:
    """One choice, as sent to the engine model: the request's settings (`gen`) and what differs per choice."""

    model: str
    prompt_ids: list[int]
    max_tokens: int
    streaming: bool
    gen: Generation
    request_id: str = ""
    seed: int | None = None  # the choice's own seed (the request's + its index)
    stop_words: list[list[int]] = field(default_factory=list)
    reused_blocks: bool = False  # also ask for kv_cache_reused_blocks (return_perf_metrics)


@dataclass
class Chunk:
    ids: list[int]
    log_probs: list[float] | None
    final: bool
    reused_blocks: int | None = None  # the prompt's KV blocks found in the engine's prefix cache


def _tensor(request: service_pb2.ModelInferRequest, name: str, arr: np.ndarray, datatype: str) -> None:
    t = request.inputs.add()
    t.name, t.datatype = name, datatype
    t.shape.extend(arr.shape)
    request.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())


def word_list(words: list[list[int]]) -> np.ndarray:
    """`[1, 2, L]` INT32: row 0 the words' ids end to end, row 1 their cumulative end offsets (-1 padded)."""
    ids = [t for w in words for t in w]
    offsets = np.cumsum([len(w) for w in words]).tolist()
    out = np.full((1, 2, max(len(ids), len(offsets))), -1, dtype=np.int32)
    out[0, 0, :] = 0
    out[0, 0, : len(ids)] = ids
    out[0, 1, : len(offsets)] = offsets
    return out


def build_request(r: EngineRequest) -> service_pb2.ModelInferRequest:
    """The `tensorrt_llm` model's inputs (spec section 2.2); knobs at their neutral values are left out."""
    req = service_pb2.ModelInferRequest(model_name=r.model, id=r.request_id)
    i32 = lambda v: np.array([[v]], dtype=np.int32)
    f32 = lambda v: np.array([[v]], dtype=np.float32)
    _tensor(req, "input_ids", np.array([r.prompt_ids], dtype=np.int32), "INT32")
    _tensor(req, "input_lengths", i32(len(r.prompt_ids)), "INT32")
    _tensor(req, "request_output_len", i32(r.max_tokens), "INT32")
    _tensor(req, "streaming", np.array([[r.streaming]]), "BOOL")
    _tensor(req, "exclude_input_in_output", np.array([[True]]), "BOOL")
    # Always set: unset would mean greedy to the engine, and OpenAI's default is temperature 1.
    _tensor(req, "temperature", f32(r.gen.temperature), "FP32")
    if r.gen.top_p < 1.0:
        _tensor(req, "runtime_top_p", f32(r.gen.top_p), "FP32")
    if r.gen.top_k > 0:
        _tensor(req, "runtime_top_k", i32(r.gen.top_k), "INT32")
    if r.seed is not None:
        _tensor(req, "random_seed", np.array([[r.seed]], dtype=np.uint64), "UINT64")
    for name, value, neutral in (
        ("presence_penalty", r.gen.presence_penalty, 0.0),
        ("frequency_penalty", r.gen.frequency_penalty, 0.0),
        ("repetition_penalty", r.gen.repetition_penalty, 1.0),
    ):
        if value != neutral:
            _tensor(req, name, f32(value), "FP32")
    if r.gen.min_tokens > 0:
        _tensor(req, "min_length", i32(r.gen.min_tokens), "INT32")
    if r.gen.ignore_eos:
        _tensor(req, "end_id", i32(-1), "INT32")  # no token ends the request
    words = [w for w in r.stop_words if 0 < len(w) <= MAX_WORD_TOKENS]
    if words:
        # The engine stops at the step a stop string's tokens appear; the text match (openai_frontend.text)
        # stays the authority: it also finds the string when the model spelled it with other tokens.
        _tensor(req, "stop_words_list", word_list(words), "INT32")
    if r.gen.logprobs:
        _tensor(req, "return_log_probs", np.array([[True]]), "BOOL")
    if r.reused_blocks:
        _tensor(req, "return_perf_metrics", np.array([[True]]), "BOOL")
    names = ["output_ids", "sequence_length"]
    names += ["output_log_probs"] if r.gen.logprobs else []
    names += ["kv_cache_reused_blocks"] if r.reused_blocks else []
    for name in names:
        req.outputs.add().name = name
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def parse_response(resp: service_pb2.ModelInferResponse, logprobs: bool) -> Chunk:
    outs = {o.name: (o, raw) for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=False)}
    final = resp.parameters["triton_final_response"].bool_param if "triton_final_response" in resp.parameters else True
    if "output_ids" not in outs:
        return Chunk([], [] if logprobs else None, final)  # the empty final response
    ids = np.frombuffer(outs["output_ids"][1], dtype=np.int32)
    n = len(ids)
    if "sequence_length" in outs:
        n = min(n, int(np.frombuffer(outs["sequence_length"][1], dtype=np.int32)[0]))
    lps = None
    if logprobs and "output_log_probs" in outs:
        lps = np.frombuffer(outs["output_log_probs"][1], dtype=np.float32)[:n].tolist()
    reused = None
    if "kv_cache_reused_blocks" in outs:
        o, raw = outs["kv_cache_reused_blocks"]
        reused = int(np.frombuffer(raw, dtype=np.int32 if o.datatype == "INT32" else np.int64)[0])
    return Chunk(ids[:n].tolist(), lps, final, reused)


class TritonEngine:
    """Engine requests over one gRPC channel to tritonserver (HTTP/2 multiplexes the streams)."""

    def __init__(self, grpc_url: str):
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        self.channel = grpc.aio.insecure_channel(grpc_url, options=options)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def generate(self, r: EngineRequest) -> AsyncIterator[Chunk]:
        """The request's chunks of new tokens, the last with `final`. Closing the iterator early (use
        `contextlib.aclosing`) cancels the request in tritonserver."""
        request = build_request(r)

        async def requests():
            yield request

        call = self.stub.ModelStreamInfer(requests())
        received = False
        try:
            async for resp in call:
                if resp.error_message:
                    raise EngineError(resp.error_message, before_output=not received)
                chunk = parse_response(resp.infer_response, r.gen.logprobs)
                received = received or bool(chunk.ids)
                yield chunk
                if chunk.final:
                    return
            raise EngineError("tritonserver closed the stream before the request's final response")
        except grpc.aio.AioRpcError as e:
            raise EngineError(f"tritonserver: {e.code().name}: {e.details()}", unavailable=True) from None
        finally:
            call.cancel()  # a no-op once the request is over; else Triton cancels it in the engine
