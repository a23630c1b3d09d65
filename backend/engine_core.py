"""The engine process of the native `tensorrtllm` backend: one per rank, started by the backend.

`python -m backend.engine_core --fd N`: N is the socket to the backend (backend/wire.py). Rank 0 hosts the
in-flight batcher `Executor`: requests arrive parsed by the one request parser (`request_parsing`), and
each executor step's outputs go back in one RESPONSES frame, sent from the executor thread as the step
ends; the backend (C++, in tritonserver) turns them into Triton responses. Ranks > 0 follow rank 0's steps
(`run_follower`) and answer nothing.

Threads: main reads frames (requests, cancels, shutdown); the executor thread runs steps and sends
responses; a stats thread sends metrics every `stats_check_period_ms`; a text thread detokenizes and sends
the responses of text-front requests (`backend/text_front.py`: the `ensemble` model served here), so that
the executor thread never decodes text. The process ends when the backend
closes the socket (tritonserver exited or was killed): nothing outlives the server that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import queue
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field

from backend import wire
from backend.interface import GPT_MODEL_TYPES, unsupported_parameter_warnings
from backend.metrics import EngineMetrics, family_lines
from backend.params import Params
from backend.request_parsing import EngineLimits, ParsedRow, parse_request
from backend.triton_utils import InputError

log = logging.getLogger("trtllm.engine")


@dataclass(eq=False)
class _Row:
    batch_index: int
    parsed: ParsedRow
    exec_id: int | None = None
    finished: bool = False
    detok: object = None  # a streaming text-front row's IncrementalDetokenizer


@dataclass(eq=False)
class _Slot:
    """One Triton request in flight (one executor request per batch row)."""

    slot: int
    triton_id: str
    streaming: bool
    rows: list[_Row] = field(default_factory=list)
    n_finished: int = 0
    front: object = None  # the TextFront of a text model's request


def load_engine_config(engine_dir: str) -> dict:
    path = os.path.join(engine_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gpt_model_path {engine_dir!r} has no config.json: not an engine directory")
    with open(path) as f:
        return json.load(f)


def engine_limits(cfg: dict) -> EngineLimits:
    model, build = cfg.get("model", {}), cfg.get("build", {})
    eos = model.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return EngineLimits(
        vocab_size=model.get("vocab_size"),
        max_input_len=build.get("max_input_len"),
        max_seq_len=build.get("max_seq_len"),
        max_beam_width=build.get("max_beam_width", 1) or 1,
        eos_token_id=eos,
    )


def executor_config_kwargs(params: Params) -> dict:
    """ExecutorConfig fields from the model parameters (spec section 2.2 keys)."""
    policy = params.str("batch_scheduler_policy", "guaranteed_no_evict")
    if policy not in ("guaranteed_no_evict", "max_utilization"):
        raise ValueError(f"batch_scheduler_policy {policy!r}: must be guaranteed_no_evict or max_utilization")
    kw = dict(
        batch_scheduler_policy=policy,
        kv_cache_free_gpu_mem_fraction=params.float("kv_cache_free_gpu_mem_fraction", 0.9),
        max_tokens_in_paged_kv_cache=params.int("max_tokens_in_paged_kv_cache", None),
        max_beam_width=params.int("max_beam_width", 1),
        enable_chunked_context=params.bool("enable_chunked_context", False),
        enable_kv_cache_reuse=params.bool("enable_kv_cache_reuse", False),
        kv_cache_host_memory_bytes=params.int("kv_cache_host_memory_bytes", 0) or 0,
        cuda_graphs=params.bool("cuda_graph_mode", True),
    )
    # Not in the TensorRT-LLM key set but useful on CPU: cap the batch below the engine's build value.
    for key in ("max_batch_size", "max_num_tokens", "max_queue_size"):
        v = params.int(key, None)
        if v is not None and v > 0:
            kw[key] = v
    return kw


def attention_window_kwargs(params: Params) -> dict:
    """Engine.from_dir's `attention_window` and `sink_tokens` (attention sinks) from max_attention_window_size
    and sink_token_length. Sinks need a window longer than them: this one, or the model's own sliding window
    (Engine.from_dir refuses sinks on a model whose layers then attend to every key)."""
    window = params.int("max_attention_window_size", None)
    sinks = params.int("sink_token_length", None) or 0
    if sinks < 0:
        raise ValueError(f"sink_token_length must be >= 0 (0: no attention sinks), got {sinks}")
    if sinks and window and sinks >= window:
        raise ValueError(
            f"sink_token_length ({sinks}) must be fewer than max_attention_window_size ({window}): the sink "
            "tokens stay visible besides the window of the latest keys"
        )
    return dict(attention_window=window, sink_tokens=sinks)


class EngineCore:
    def __init__(self, conn: wire.Connection, config: dict):
        self.conn = conn
        model_config = config["model_config"]
        params = Params(model_config, warn=log.warning)
        self.decoupled = bool((model_config.get("model_transaction_policy") or {}).get("decoupled", False))
        logits = [o for o in model_config.get("output", []) if o.get("name") == "context_logits"]
        self.logits_dtype = logits[0].get("data_type", "TYPE_FP32") if logits else "TYPE_FP32"
        self.perf_outputs = wire.declares_perf_outputs(model_config)
        self.model_name = config.get("model_name", "tensorrt_llm")
        model_type = (params.str("gpt_model_type", "inflight_fused_batching") or "").lower()
        if model_type not in GPT_MODEL_TYPES:
            raise ValueError(f"gpt_model_type {model_type!r}: must be one of {sorted(GPT_MODEL_TYPES)}")
        if model_type == "v1":
            log.warning("gpt_model_type=v1: requests are batched in flight anyway (there is no V1 batching here)")
        for message in unsupported_parameter_warnings(params.raw):
            log.warning(message)
        engine_dir = params.str("gpt_model_path", required=True)
        engine_cfg = load_engine_config(engine_dir)
        self.limits = engine_limits(engine_cfg)
        self.exclude_input_default = params.bool("exclude_input_in_output", False)
        self.cancel_ms = params.int("cancellation_check_period_ms", 100)
        self.stats_period = params.int("stats_check_period_ms", 100) / 1000.0
        world = (engine_cfg.get("mapping") or {}).get("world_size", 1)
        # tensorrt_llm.runtime imports torch but does not start CUDA: CUDA_VISIBLE_DEVICES below still applies.
        from tensorrt_llm.runtime import env_rank

        rank = env_rank() if world > 1 else 0
        if rank is None:
            raise ValueError(
                f"engine {engine_dir!r} has world_size {world}: serve it with one server per rank "
                f"(scripts/launch_triton_server.py --world_size {world})"
            )
        self.rank, self.world = rank, world
        ids = [s for s in (params.str("gpu_device_ids", "") or "").split(",") if s.strip()]
        if ids:  # before torch initializes CUDA: this rank sees only its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[rank % len(ids)].strip()

        # Before the executor exists: its thread calls _on_outputs, which reads them.
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._rows: dict[int, tuple[_Slot, _Row]] = {}  # executor request id -> its slot and row
        self._by_id: dict[str, list[_Slot]] = {}  # Triton request id -> slots (for stop requests)

        import torch

        from inflight_batcher import Executor, ExecutorConfig, run_follower
        from tensorrt_llm.runtime import Engine, init_distributed

        self.exec_config = ExecutorConfig(**executor_config_kwargs(params))
        self.limits.max_beam_width = min(self.limits.max_beam_width, self.exec_config.max_beam_width)
        device = os.environ.get("TRTLLM_DEVICE") or params.str("device", None)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if world > 1:
            init_distributed(world, rank)
        log.info("rank %d/%d: loading engine %s on %s (%s)", rank, world, engine_dir, device, self.exec_config)
        engine = Engine.from_dir(engine_dir, device=device, rank=rank, **attention_window_kwargs(params))
        on_gpu = str(engine.device).startswith("cuda")

        # Memory the engine holds on its GPU (weights, KV cache, graphs), as PyTorch's allocator reserved it.
        # Read from the nested statistics: memory_reserved() flattens all of them in Python first, ~0.5 ms of
        # the GIL at every stats period that the executor thread waits out (py-spy behind tritonserver, H200).
        def reserved() -> float:
            return float(torch.cuda.memory_stats_as_nested_dict(engine.device)["reserved_bytes"]["all"]["current"])

        self.metrics = EngineMetrics(reserved if on_gpu else None)
        self._run_follower = (lambda: run_follower(engine, self.exec_config)) if rank > 0 else None
        self.executor = None if rank > 0 else Executor(engine, self.exec_config, on_outputs=self._on_outputs)

        self._stopping = threading.Event()
        self._rejected = 0  # requests refused before reaching the executor (bad input, full queue)
        self._fronts: dict[int, object] = {}  # front id -> TextFront, or the message of why it failed to load
        self._text_queue: queue.SimpleQueue = queue.SimpleQueue()  # lists of text-front outputs, None: stop
        self._text_thread = threading.Thread(target=self._text_loop, name="trtllm-text", daemon=True)

    # -- main loop -----------------------------------------------------------------------------------
    def ready_text(self) -> str:
        role = "leader" if self.executor is not None else "follower"
        return (
            f"role={role}\nrank={self.rank}\nworld={self.world}\ndecoupled={int(self.decoupled)}\n"
            f"logits_dtype={self.logits_dtype}\ncancel_ms={self.cancel_ms}\n{family_lines()}\n"
        )

    def run(self) -> None:
        # Everything loaded so far (torch, transformers, the engine: ~230,000 objects) lives as long as the
        # process: out of the collector's reach, a full collection no longer stops a step for ~150 ms
        # (benchmarks/host_step.py, CPU: the longest batch-256 step 250-270 ms -> 11-16 ms).
        gc.collect()
        gc.freeze()
        self.conn.send(wire.READY, self.ready_text().encode())
        if self._run_follower is not None:
            self._run_follower()  # returns when the leader shuts down
            return
        stats = threading.Thread(target=self._stats_loop, name="trtllm-stats", daemon=True)
        stats.start()
        self._text_thread.start()
        while True:
            frame = self.conn.recv()
            if frame is None:  # the server is gone: nobody to answer
                log.warning("the backend closed the connection; stopping")
                self.executor.shutdown()
                return
            kind, payload = frame
            if kind == wire.REQUESTS:
                for slot, front, rid, inputs in wire.decode_requests(payload):
                    self._start(slot, front, rid, inputs)
            elif kind == wire.FRONT:
                self._attach_front(*wire.decode_front(payload))
            elif kind == wire.CANCEL:
                (slot,) = struct.unpack_from("<Q", payload)
                with self._lock:
                    s = self._slots.get(slot)
                if s is not None:
                    self._cancel(s)
            elif kind == wire.SHUTDOWN:
                (drain,) = struct.unpack_from("<d", payload)
                self._stopping.set()
                self.executor.shutdown(drain_timeout=drain)  # the last outputs go out from the loop
                self._text_queue.put(None)  # then the text thread sends what it still holds, and ends
                self._text_thread.join(timeout=10)
                return

    # -- requests ------------------------------------------------------------------------------------
    def _attach_front(self, front: int, spec: dict) -> None:
        from backend.text_front import TextFront

        try:
            self._fronts[front] = TextFront(spec)
            log.info("text model %r attached (front %d)", spec.get("name"), front)
        except Exception as e:  # its requests get the reason; the engine model serves on
            log.exception("text model %r cannot be served", spec.get("name"))
            self._fronts[front] = f"model {spec.get('name')!r} cannot be served: {type(e).__name__}: {e}"

    def _start(self, slot: int, front_id: int, triton_id: str, inputs: dict) -> None:
        from inflight_batcher import QueueFullError, Request, SamplingParams

        front = None
        try:
            decoupled = self.decoupled
            if front_id:
                front = self._fronts.get(front_id, f"text front {front_id} is unknown to the engine process")
                if isinstance(front, str):
                    self._reply_error(slot, wire.ERR_INTERNAL, front)
                    return
                decoupled = front.decoupled
                inputs = front.engine_inputs(inputs)
            parsed = parse_request(inputs, self.limits, self.exclude_input_default)
            if parsed.stop:
                self._stop(slot, triton_id)
                return
            if parsed.streaming and not decoupled:
                raise InputError("streaming is only supported if the model is deployed in decoupled mode")
            if len(parsed.rows) > 1 and not decoupled:
                raise InputError("a request with batch size > 1 needs the model in decoupled mode")
            if any(r.return_perf_metrics for r in parsed.rows) and not (front or self).perf_outputs:
                name = front.name if front is not None else self.model_name
                raise InputError(
                    f"return_perf_metrics: model {name!r} does not declare its outputs "
                    f"({', '.join(wire.PERF_OUTPUTS)}) in its config.pbtxt"
                )
            s = _Slot(slot=slot, triton_id=triton_id, streaming=parsed.streaming, front=front)
            s.rows = [_Row(batch_index=b, parsed=row) for b, row in enumerate(parsed.rows)]
            if front is not None and s.streaming:
                for row in s.rows:
                    row.detok = front.detokenizer()
            # Held while enqueueing: the executor thread must find a row's id before its first output.
            with self._lock:
                try:
                    for row in s.rows:
                        p = row.parsed
                        row.exec_id = self.executor.enqueue(
                            Request(
                                input_ids=p.input_ids,
                                max_new_tokens=p.max_new_tokens,
                                end_id=p.end_id,
                                pad_id=p.pad_id,
                                streaming=s.streaming,
                                sampling=SamplingParams(**p.sampling),
                                stop_words=p.stop_words,
                                bad_words=p.bad_words,
                                return_log_probs=p.return_log_probs,
                                return_perf_metrics=p.return_perf_metrics,
                                exclude_input_in_output=p.exclude_input_in_output,
                                client_id=triton_id or None,
                            )
                        )
                        self._rows[row.exec_id] = (s, row)
                except Exception:
                    for row in s.rows:  # rows already enqueued must not run on for nobody
                        if row.exec_id is not None:
                            self._rows.pop(row.exec_id, None)
                            self.executor.cancel(row.exec_id)
                    raise
                self._slots[slot] = s
                if triton_id:
                    self._by_id.setdefault(triton_id, []).append(s)
        except ValueError as e:  # InputError, and the executor's own checks: both name the problem
            message = str(e) if front is None else front.client_message(str(e))
            self._reply_error(slot, wire.ERR_INVALID_ARG, message)
        except QueueFullError as e:
            # "Exceeds maximum queue size" is the TensorRT-LLM backend's wording, which clients match.
            self._reply_error(slot, wire.ERR_UNAVAILABLE, f"Exceeds maximum queue size: {e}")
        except Exception as e:
            log.exception("request not accepted")
            self._reply_error(slot, wire.ERR_INTERNAL, f"request not accepted: {type(e).__name__}: {e}")

    def _stop(self, slot: int, triton_id: str) -> None:
        if not triton_id:
            raise InputError("a stop request needs the request id of the request to stop")
        with self._lock:
            targets = list(self._by_id.get(triton_id, []))
        for s in targets:
            self._cancel(s)
        if not targets:
            log.warning("stop request for request id %r, which is not in flight", triton_id)
        buf = bytearray(struct.pack("<I", 1))
        wire.encode_record(buf, slot, 0, wire.FINAL | wire.EMPTY)
        self.conn.send(wire.RESPONSES, buf)

    def _cancel(self, s: _Slot) -> None:
        for row in s.rows:
            if row.exec_id is not None and not row.finished:
                self.executor.cancel(row.exec_id)

    def _reply_error(self, slot: int, code: int, message: str) -> None:
        self._rejected += 1  # main thread only
        buf = bytearray(struct.pack("<I", 1))
        wire.encode_record(buf, slot, 0, wire.FINAL | wire.ERROR | wire.ROW_END, error=(code, message))
        self.conn.send(wire.RESPONSES, buf)

    # -- outputs (executor thread) -------------------------------------------------------------------
    def _on_outputs(self, outputs: list) -> None:
        buf = bytearray(4)
        n = 0
        texts = []
        with self._lock:
            for out in outputs:
                entry = self._rows.get(out.request_id)
                if entry is None:
                    continue
                s, row = entry
                final = False
                if out.finished:
                    row.finished = True
                    s.n_finished += 1
                    del self._rows[out.request_id]
                    final = s.n_finished == len(s.rows)
                    if final:
                        self._forget(s)
                    self.metrics.observe_request(len(row.parsed.input_ids), len(out.tokens[0]) if out.tokens else 0)
                if s.front is None:
                    n += self._encode(buf, s, row, out, final)
                else:
                    texts.append((s, row, out, final))
        if texts:
            self._text_queue.put(texts)
        if n:
            struct.pack_into("<I", buf, 0, n)
            with contextlib.suppress(OSError):  # the backend is gone; the main loop ends the process
                self.conn.send(wire.RESPONSES, buf)

    def _encode(self, buf: bytearray, s: _Slot, row: _Row, out, final: bool) -> int:
        flags = wire.FINAL if final else 0
        if out.finished:
            flags |= wire.ROW_END
        if out.finished and out.finish_reason == "error":
            err = (wire.ERR_INTERNAL, f"request failed: {out.error or 'unknown error'}")
            wire.encode_record(buf, s.slot, row.batch_index, flags | wire.ERROR, error=err)
            return 1
        lp = out.log_probs
        if s.streaming:
            new = out.new_tokens[0] if out.new_tokens else []
            if len(new) == 1 and lp is None and out.perf is None:
                wire.encode_token_record(buf, s.slot, row.batch_index, flags | wire.STREAM, new[0])
                return 1
            if not new and not out.finished:
                return 0
            if lp is not None:
                k = len(new)
                flags |= wire.LOGPROBS
                lp = [list(x[-k:]) if k else [] for x in lp]
            flags |= wire.STREAM
            wire.encode_record(
                buf, s.slot, row.batch_index, flags, [new], [len(new)], out.cum_log_probs, lp, perf=out.perf
            )
            return 1
        if not out.finished:
            return 0  # non-streaming requests answer once, at the end
        p = row.parsed
        prompt = [] if p.exclude_input_in_output else p.input_ids
        beams = (out.tokens or [[]])[: p.num_return_sequences]  # best first
        if lp is not None:
            lp = lp[: len(beams)]
        cum = out.cum_log_probs[: len(beams)] if out.cum_log_probs is not None else None
        lengths = [len(prompt) + len(b) for b in beams]
        width = max(lengths)
        pad = next((x for x in (p.pad_id, p.end_id, self.limits.eos_token_id) if x is not None), 0)
        pad = max(pad, 0)
        ids = [prompt + b + [pad] * (width - n) for b, n in zip(beams, lengths, strict=True)]
        if lp is not None:
            flags |= wire.LOGPROBS
            w = max(len(x) for x in lp)
            lp = [list(x) + [0.0] * (w - len(x)) for x in lp]
        wire.encode_record(buf, s.slot, row.batch_index, flags, ids, lengths, cum, lp, perf=out.perf)
        return 1

    # -- text-front outputs (text thread) -------------------------------------------------------------
    def _text_loop(self) -> None:
        from backend.detokenizer import add_many

        while True:
            batch = self._text_queue.get()
            if batch is None:
                return
            buf = bytearray(4)
            n = 0
            # The streamed pieces of the whole step first, in one batched decode.
            streamed = [
                (row.detok, out.new_tokens[0] if out.new_tokens else [], out.finished)
                for s, row, out, _ in batch
                if s.streaming and out.finish_reason != "error"
            ]
            try:
                pieces = iter(add_many(streamed))
            except Exception as e:  # a decode failure fails this step's text requests, not the process
                log.exception("detokenizing failed")
                pieces = None
                error = f"detokenizing failed: {type(e).__name__}: {e}"
            for s, row, out, final in batch:
                try:
                    if pieces is None:
                        raise RuntimeError(error)
                    piece = next(pieces) if s.streaming and out.finish_reason != "error" else None
                    if piece is not None and s.front.accumulate:  # the whole text so far (a BLS setting)
                        piece = row.detok.text
                    n += self._encode_text(buf, s, row, out, final, piece)
                except Exception as e:
                    flags = (wire.FINAL if final else 0) | wire.ROW_END | wire.ERROR
                    wire.encode_record(buf, s.slot, row.batch_index, flags, error=(wire.ERR_INTERNAL, str(e)))
                    n += 1
                    if not out.finished:
                        self._cancel(s)
            if n:
                struct.pack_into("<I", buf, 0, n)
                with contextlib.suppress(OSError):
                    self.conn.send(wire.RESPONSES, buf)

    def _encode_text(self, buf: bytearray, s: _Slot, row: _Row, out, final: bool, piece: str | None) -> int:
        """`_encode` for a text front: text_output instead of token ids (as postprocessing decodes them);
        `piece`: a streamed step's text."""
        flags = (wire.FINAL if final else 0) | wire.TEXT
        if out.finished:
            flags |= wire.ROW_END
        if out.finished and out.finish_reason == "error":
            err = (wire.ERR_INTERNAL, f"request failed: {out.error or 'unknown error'}")
            wire.encode_record(buf, s.slot, row.batch_index, (flags & ~wire.TEXT) | wire.ERROR, error=err)
            return 1
        lp, cum = out.log_probs, out.cum_log_probs
        if s.streaming:
            new = out.new_tokens[0] if out.new_tokens else []
            if not new and not out.finished:
                return 0
            if lp is None and out.perf is None:
                wire.encode_text_record(buf, s.slot, row.batch_index, flags, piece.encode("utf-8"))
                return 1
            texts = [piece.encode("utf-8")]
            if lp is not None:
                lp = [list(x[-len(new) :]) if new else [] for x in lp]
        else:
            if not out.finished:
                return 0
            p = row.parsed
            prompt = [] if p.exclude_input_in_output else p.input_ids
            beams = (out.tokens or [[]])[: p.num_return_sequences]  # best first
            texts = [s.front.text(prompt + b) for b in beams]
            if lp is not None:
                w = max(len(x) for x in lp[: len(beams)])
                lp = [list(x) + [0.0] * (w - len(x)) for x in lp[: len(beams)]]
        if lp is not None:
            flags |= wire.LOGPROBS
            lp, cum = lp[: len(texts)], cum[: len(texts)]
        wire.encode_record(
            buf, s.slot, row.batch_index, flags, [], [0] * len(texts), cum, lp, texts=texts, perf=out.perf
        )
        return 1

    def _forget(self, s: _Slot) -> None:
        self._slots.pop(s.slot, None)
        lst = self._by_id.get(s.triton_id)
        if lst is not None:
            if s in lst:
                lst.remove(s)
            if not lst:
                del self._by_id[s.triton_id]

    def _stats_loop(self) -> None:
        while not self._stopping.wait(self.stats_period):
            try:
                text = self.metrics.lines(self.executor.stats(), self._rejected)
                self.conn.send(wire.METRICS, text.encode())
            except OSError:
                return
            except Exception:
                log.exception("metrics update failed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fd", type=int, required=True, help="connected socket to the backend")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TRTLLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s trtllm engine %(process)d %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # Three threads share one GIL; the executor thread must get it back quickly when a step's GPU work ends
    # (CPython hands the GIL over only after this interval, 5 ms by default: a whole decode step).
    interval = os.environ.get("TRTLLM_SWITCH_INTERVAL_S")
    if interval:
        sys.setswitchinterval(float(interval))
    conn = wire.Connection(socket.socket(fileno=args.fd))
    frame = conn.recv()
    if frame is None or frame[0] != wire.CONFIG:
        log.error("no CONFIG frame from the backend")
        return 2
    try:
        core = EngineCore(conn, json.loads(bytes(frame[1])))
    except Exception as e:
        log.exception("engine start failed")
        conn.send(wire.FATAL, f"{type(e).__name__}: {e}".encode())
        return 1
    core.run()
    return 0


if __name__ == "__main__":
    # os._exit: no interpreter teardown racing the executor's daemon threads (CUDA, NCCL) at exit.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
