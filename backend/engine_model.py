"""The `tensorrt_llm` model: hosts an in-flight batcher `Executor` and answers Triton requests from it.

Threads (the executor runs its own loop thread; nothing here blocks it):
- Triton's thread calls `execute`: parse, validate, enqueue, return at once (decoupled), or wait for the
  final outputs (non-decoupled);
- executor thread calls the request callback, which only puts the `Output` on `self._outbox`;
- sender thread: turns outputs into responses and sends them (the IPC to the server may block, which the
  executor thread must never do). It takes whatever is queued at once: a streaming row's queued outputs
  go out as one response (see "Streaming responses" below);
- watcher thread: every `cancellation_check_period_ms`, asks Triton whether in-flight requests were
  cancelled and cancels them in the executor; every `stats_check_period_ms`, updates the metrics.

Streaming responses carry only new tokens in `output_ids` `[1, 1, n]`; two extra outputs let the
postprocessing model decode each chunk exactly (see `backend/detokenizer.py`): `stream_prefix_ids` (the
tokens streamed before this chunk) and `stream_final` (true on the request's last chunk). When the sender
keeps up, each executor output (one step's tokens) is one response. Under load, when a step's responses
take longer to send than the engine takes to run the next step (each costs tensors and a shared-memory
round trip: ~0.3 ms measured on the H100), the outputs queued meanwhile for a row are merged, so one
response may carry several tokens (in order, `sequence_length` = their count, log probs one per token; a
final output ends the merge, an error is sent on its own). Sends per second stay bounded and throughput
follows the engine instead of the sender.

Only the outputs the caller requested are built (all when none are named); constant outputs (zero
logits, `sequence_index`, `stream_final`, log probs not asked for) are shared read-only arrays, and
`stream_prefix_ids` is a view of the row's token buffer (no per-response list-to-array conversion; the
backend still copies it to shared memory when sending).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from backend.metrics import EngineMetrics
from backend.params import Params
from backend.request_parsing import EngineLimits, ParsedRow, parse_request
from backend.triton_utils import InputError, error_response, get_logger, input_array, log_info, log_warn, pb_utils

# Inputs read from a request; the model config declares more (to reject them clearly), see request_parsing.
INPUT_NAMES = [
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "stop_words_list",
    "bad_words_list",
    "embedding_bias",
    "beam_width",
    "runtime_top_k",
    "runtime_top_p",
    "min_length",
    "temperature",
    "len_penalty",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "random_seed",
    "return_log_probs",
    "return_context_logits",
    "return_generation_logits",
    "return_perf_metrics",
    "exclude_input_in_output",
    "stop",
    "streaming",
    "num_return_sequences",
    "draft_input_ids",
    "draft_logits",
    "draft_acceptance_threshold",
    "decoder_input_ids",
    "decoder_input_lengths",
    "encoder_input_features",
    "encoder_output_lengths",
    "cross_attention_mask",
    "skip_cross_attn_blocks",
    "prompt_embedding_table",
    "prompt_table_extra_ids",
    "prompt_vocab_size",
    "lora_task_id",
    "lora_weights",
    "lora_config",
    "guided_decoding_guide_type",
    "guided_decoding_guide",
    "mrope_rotary_cos_sin",
    "mrope_position_deltas",
    "context_phase_params",
    "lookahead_window_size",
    "lookahead_ngram_size",
    "lookahead_verification_set_size",
    "runtime_top_p_min",
    "runtime_top_p_decay",
    "runtime_top_p_reset_ids",
    "beam_search_diversity_rate",
    "early_stopping",
]

GPT_MODEL_TYPES = {"v1", "inflight_batching", "inflight_fused_batching"}


def _frozen(a: np.ndarray) -> np.ndarray:
    """`a`, read-only: constant arrays are shared by every response (a tensor copies its array's data to
    shared memory when sent and never writes to it)."""
    a.flags.writeable = False
    return a


_EMPTY_IDS = _frozen(np.zeros(0, dtype=np.int32))
_NO_PREFIX = _frozen(np.zeros((1, 0), dtype=np.int32))  # stream_prefix_ids of a whole response
_ZERO_INDEX = _frozen(np.zeros((1, 1), dtype=np.int32))  # sequence_index
_FINAL = {flag: _frozen(np.array([[flag]], dtype=bool)) for flag in (False, True)}  # stream_final
_NO_CUM_LOG_PROBS = _frozen(np.zeros((1, 1), dtype=np.float32))  # one beam, no log probs asked for
_NO_LOG_PROBS = _frozen(np.zeros((1, 1, 0), dtype=np.float32))


def _is_error(out) -> bool:
    return out.finished and out.finish_reason == "error"


@dataclass(eq=False)
class _Row:
    batch_index: int
    parsed: ParsedRow
    exec_id: int | None = None
    finished: bool = False
    final_output: object = None
    # Tokens sent so far (streaming): the first `n_streamed` of `_streamed_buf`. Positions below
    # `n_streamed` are never written again, so a view of them can go into a response as is.
    n_streamed: int = 0
    _streamed_buf: np.ndarray | None = None
    _batch_index_array: np.ndarray | None = None

    @property
    def streamed(self) -> np.ndarray:
        """The tokens streamed so far, `[n]` int32: a view, no copy per response."""
        if self._streamed_buf is None:
            return _EMPTY_IDS
        return self._streamed_buf[: self.n_streamed]

    def add_streamed(self, new: np.ndarray) -> None:
        n, k = self.n_streamed, len(new)
        buf = self._streamed_buf
        if buf is None or n + k > len(buf):
            grown = np.empty(max(n + k, 2 * n, self.parsed.max_new_tokens, 16), dtype=np.int32)
            if n:
                grown[:n] = buf[:n]  # earlier views keep the old buffer alive, unchanged
            buf = self._streamed_buf = grown
        buf[n : n + k] = new
        self.n_streamed = n + k

    @property
    def batch_index_array(self) -> np.ndarray:
        if self._batch_index_array is None:
            self._batch_index_array = _frozen(np.array([[self.batch_index]], dtype=np.int32))
        return self._batch_index_array


@dataclass(eq=False)
class _Stream:
    """One Triton request in flight (one executor request per batch row)."""

    request: object
    triton_id: str
    streaming: bool
    sender: object = None  # decoupled response sender
    rows: list[_Row] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    # Triton frees a request's response factory with its final response; `is_cancelled()` after that
    # crashes the server (seen: SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled). So the final send and
    # every `is_cancelled()` call hold `lock`, and `closed` is set before the final response goes out.
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    final_sent: bool = False
    # Outputs the caller asked for (empty: all, as Triton means it). Only those are built and copied:
    # a streamed response's cost grows with its tensors.
    requested: frozenset = frozenset()

    def keep(self, tensors: list) -> list:
        return [t for t in tensors if t.name() in self.requested] if self.requested else tensors

    def wants(self, name: str) -> bool:
        return not self.requested or name in self.requested

    arrival: float = field(default_factory=time.monotonic)

    @property
    def live_exec_ids(self) -> list[int]:
        return [r.exec_id for r in self.rows if r.exec_id is not None and not r.finished]


def coalesce(items: list[tuple]) -> list[tuple]:
    """Groups the `(stream, row, output)` items the sender found queued into `(stream, row, [outputs])`,
    one response each. A streaming row's consecutive outputs form one group, placed where the row's first
    output of the group was (per-row order and the rows' order of first appearance are kept); a row's
    final output closes its group; an error output is a group of its own (after what preceded it). Other
    outputs (non-streaming requests) are groups of one. One item per row gives one group per item."""
    groups: list[tuple] = []
    open_groups: dict[_Row, list] = {}  # row -> outputs of its group still open to merging
    for stream, row, out in items:
        outs = open_groups.get(row)
        if outs is not None and not _is_error(out):
            outs.append(out)
        else:
            outs = [out]
            groups.append((stream, row, outs))
        if stream.streaming and not out.finished:
            open_groups[row] = outs
        else:
            open_groups.pop(row, None)
    return groups


def merge_outputs(row: _Row, outs: list):
    """One output standing for a group of consecutive streamed outputs of `row`: all their new tokens, in
    order; everything else (finished, finish_reason, error, tokens, log probs, which are whole lists) from
    the last. Beam-search outputs carry whole beams each: the last one stands for all."""
    last = outs[-1]
    if len(outs) == 1:
        return last
    if row.parsed.sampling.get("beam_width", 1) > 1 or any(len(o.new_tokens or ()) > 1 for o in outs):
        return last
    new: list[int] = []
    for o in outs:
        if o.new_tokens:
            new.extend(o.new_tokens[0])
    return replace(last, new_tokens=[new])


def load_engine_limits(engine_dir: str) -> EngineLimits:
    path = os.path.join(engine_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gpt_model_path {engine_dir!r} has no config.json: not an engine directory")
    with open(path) as f:
        cfg = json.load(f)
    model, build = cfg.get("model", {}), cfg.get("build", {})
    world = (cfg.get("mapping") or {}).get("world_size", 1)
    if world != 1:
        # The rank-0 leader / follower split over MPI is not built yet: say so at load, never hang.
        raise ValueError(
            f"engine {engine_dir!r} has world_size {world}; the Triton backend serves world_size 1 engines only"
        )
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
    )
    # Not in the TensorRT-LLM key set but useful on CPU: cap the batch below the engine's build value.
    for key in ("max_batch_size", "max_num_tokens", "max_queue_size"):
        v = params.int(key, None)
        if v is not None and v > 0:
            kw[key] = v
    return kw


class EngineModel:
    """What `all_models/inflight_batcher_llm/tensorrt_llm/1/model.py` delegates to."""

    def initialize(self, args: dict) -> None:
        self.logger = get_logger(__name__)
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", "tensorrt_llm")
        self.model_version = str(args.get("model_version", "1"))
        params = Params(self.model_config, warn=lambda m: log_warn(self.logger, m))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        logits_cfg = pb_utils.get_output_config_by_name(self.model_config, "context_logits")
        self.logits_dtype = pb_utils.triton_string_to_numpy(logits_cfg["data_type"]) if logits_cfg else np.float32
        self._zero_context_logits = _frozen(np.zeros((1, 1, 1), dtype=self.logits_dtype))
        self._zero_generation_logits = _frozen(np.zeros((1, 1, 1, 1), dtype=self.logits_dtype))

        model_type = (params.str("gpt_model_type", "inflight_fused_batching") or "").lower()
        if model_type not in GPT_MODEL_TYPES:
            raise ValueError(f"gpt_model_type {model_type!r}: must be one of {sorted(GPT_MODEL_TYPES)}")
        engine_dir = params.str("gpt_model_path", required=True)
        self.limits = load_engine_limits(engine_dir)
        self.exclude_input_default = params.bool("exclude_input_in_output", False)
        self.cancel_period = params.int("cancellation_check_period_ms", 100) / 1000.0
        self.stats_period = params.int("stats_check_period_ms", 100) / 1000.0

        from inflight_batcher import Executor, ExecutorConfig

        cfg = ExecutorConfig(**executor_config_kwargs(params))
        self.limits.max_beam_width = min(self.limits.max_beam_width, cfg.max_beam_width)
        device = os.environ.get("TRTLLM_DEVICE") or params.str("device", None)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        log_info(self.logger, f"loading engine {engine_dir} on {device} ({cfg})")
        self.executor = Executor.from_engine_dir(engine_dir, cfg, device=device)
        self.max_batch_size = cfg.max_batch_size or self.model_config.get("max_batch_size", 0)

        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._by_id: dict[str, list[_Stream]] = {}
        self._outbox: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self.metrics = EngineMetrics(self.model_name, self.model_version)
        self._sender = threading.Thread(target=self._send_loop, name="trtllm-sender", daemon=True)
        self._watcher = threading.Thread(target=self._watch_loop, name="trtllm-watcher", daemon=True)
        self._sender.start()
        self._watcher.start()

    # -- requests ------------------------------------------------------------------------------------
    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                self._start(request)
            return None
        # Non-decoupled: enqueue all, then wait for every final output (one response per request).
        started = [self._start(request) for request in requests]
        responses = []
        for s in started:
            if isinstance(s, _Stream):
                while not s.done.wait(self.cancel_period):
                    with s.lock:
                        cancelled = not s.closed and s.request.is_cancelled()
                    if cancelled:
                        self._cancel(s)
                responses.append(self._final_response(s))
            else:
                responses.append(s)
        return responses

    def _start(self, request):
        """Parse and enqueue one request. Decoupled: errors are sent at once; else returned."""
        sender = request.get_response_sender() if self.decoupled else None
        triton_id = request.request_id() or ""
        try:
            inputs = {n: input_array(request, n) for n in INPUT_NAMES}
            parsed = parse_request(inputs, self.limits, self.exclude_input_default)
            if parsed.stop:
                return self._stop(triton_id, sender)
            if parsed.streaming and not self.decoupled:
                raise InputError("streaming is only supported if the model is deployed in decoupled mode")
            if len(parsed.rows) > 1 and not self.decoupled:
                raise InputError("a request with batch size > 1 needs the model in decoupled mode")
            stream = _Stream(request=request, triton_id=triton_id, streaming=parsed.streaming, sender=sender)
            names = getattr(request, "requested_output_names", None)
            stream.requested = frozenset(names()) if names is not None else frozenset()
            stream.rows = [_Row(batch_index=b, parsed=row) for b, row in enumerate(parsed.rows)]
            with self._lock:
                self._streams.add(stream)
                if triton_id:
                    self._by_id.setdefault(triton_id, []).append(stream)
            self._enqueue_rows(stream)
            return stream
        except InputError as e:
            return self._reply_error(sender, str(e))
        except ValueError as e:  # the executor's own checks name the problem too
            return self._reply_error(sender, str(e))
        except Exception as e:  # e.g. QueueFullError: every request must get its (final) answer
            full = type(e).__name__ == "QueueFullError"
            return self._reply_error(sender, f"request not accepted: {e}", "UNAVAILABLE" if full else "INTERNAL")

    def _enqueue_rows(self, stream: _Stream) -> None:
        from inflight_batcher import Request, SamplingParams

        try:
            for row in stream.rows:
                p = row.parsed
                req = Request(
                    input_ids=p.input_ids,
                    max_new_tokens=p.max_new_tokens,
                    end_id=p.end_id,
                    pad_id=p.pad_id,
                    streaming=stream.streaming,
                    sampling=SamplingParams(**p.sampling),
                    stop_words=p.stop_words,
                    bad_words=p.bad_words,
                    return_log_probs=p.return_log_probs,
                    exclude_input_in_output=p.exclude_input_in_output,
                    client_id=stream.triton_id or None,
                    callback=lambda out, s=stream, r=row: self._outbox.put((s, r, out)),
                )
                row.exec_id = self.executor.enqueue(req)
        except Exception:
            # Rows already enqueued must not run on for nobody.
            for row in stream.rows:
                if row.exec_id is not None:
                    self.executor.cancel(row.exec_id)
            self._forget(stream)
            raise

    def _stop(self, triton_id: str, sender):
        if not triton_id:
            raise InputError("a stop request needs the request id of the request to stop")
        with self._lock:
            targets = list(self._by_id.get(triton_id, []))
        for s in targets:
            self._cancel(s)
        if not targets:
            log_warn(self.logger, f"stop request for request id {triton_id!r}, which is not in flight")
        response = pb_utils.InferenceResponse(output_tensors=[])
        if sender is not None:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        return response

    def _cancel(self, stream: _Stream) -> None:
        for exec_id in stream.live_exec_ids:
            self.executor.cancel(exec_id)

    def _reply_error(self, sender, message: str, code_name: str = "INVALID_ARG"):
        response = error_response(message, code_name)
        if sender is not None:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        return response

    def _forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)
            lst = self._by_id.get(stream.triton_id)
            if lst is not None:
                if stream in lst:
                    lst.remove(stream)
                if not lst:
                    del self._by_id[stream.triton_id]

    # -- responses -----------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            items = [self._outbox.get()]
            # Whatever else queued meanwhile goes out now too, each streaming row's queued chunks merged
            # into one response: when the sender lags (a step's responses take longer to send than the
            # engine's next step), a response carries several tokens and the sends per second stay
            # bounded. When it keeps up, one item at a time: one response per output, as produced.
            while True:
                try:
                    items.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            for stream, row, outs in coalesce([it for it in items if it is not None] if stop else items):
                self._send_group(stream, row, outs)
            if stop:
                return

    def _send_group(self, stream: _Stream, row: _Row, outs: list) -> None:
        out = merge_outputs(row, outs)
        try:
            self._on_output(stream, row, out)
        except Exception as e:  # a failed send must not kill the sender thread
            log_warn(self.logger, f"sending a response failed: {e!r}")
            done = out.finished and all(r.finished for r in stream.rows)
            if done and stream.sender is not None and not stream.final_sent:
                with stream.lock, contextlib.suppress(Exception):  # the client must still get a final
                    stream.closed = True
                    self._forget(stream)
                    stream.sender.send(
                        error_response(f"internal error: {e!r}"),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    )
                    stream.final_sent = True

    def _on_output(self, stream: _Stream, row: _Row, out) -> None:
        if out.finished:
            row.finished = True
            row.final_output = out
            self.metrics.observe_request(len(row.parsed.input_ids), len(out.tokens[0]) if out.tokens else 0)
        all_done = all(r.finished for r in stream.rows)
        if not self.decoupled:
            if all_done:
                with stream.lock:
                    stream.closed = True
                    self._forget(stream)
                stream.done.set()
            return
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if all_done else 0
        if out.finished and out.finish_reason == "error":
            response = error_response(f"request failed: {out.error or 'unknown error'}")
        elif stream.streaming:
            response = self._chunk_response(stream, row, out)
        elif out.finished:
            response = self._full_response(stream, row, out)
        else:
            return  # non-streaming requests answer once, at the end
        if not all_done:
            stream.sender.send(response, flags=flags)
            return
        with stream.lock:
            stream.closed = True
            self._forget(stream)
            stream.sender.send(response, flags=flags)
            stream.final_sent = True

    def _common_outputs(self, stream: _Stream, row: _Row) -> list:
        t, want = pb_utils.Tensor, stream.wants
        tensors = []
        if want("batch_index"):
            tensors.append(t("batch_index", row.batch_index_array))
        if want("sequence_index"):
            tensors.append(t("sequence_index", _ZERO_INDEX))
        # Not produced by this engine (requests for them are rejected); zeros keep the ensemble's
        # outputs complete, as the TensorRT-LLM backend does for unrequested outputs.
        if want("context_logits"):
            tensors.append(t("context_logits", self._zero_context_logits))
        if want("generation_logits"):
            tensors.append(t("generation_logits", self._zero_generation_logits))
        return tensors

    def _chunk_response(self, stream: _Stream, row: _Row, out):
        """A streamed response: the new tokens of `out` (several when the sender merged queued outputs)."""
        new = np.array(out.new_tokens[0] if out.new_tokens else (), dtype=np.int32)
        n = len(new)
        t, want = pb_utils.Tensor, stream.wants
        tensors = []
        if want("output_ids"):
            tensors.append(t("output_ids", new.reshape(1, 1, n)))
        if want("sequence_length"):
            tensors.append(t("sequence_length", np.array([[n]], dtype=np.int32)))
        if want("stream_prefix_ids"):
            tensors.append(t("stream_prefix_ids", row.streamed.reshape(1, -1)))
        if want("stream_final"):
            tensors.append(t("stream_final", _FINAL[bool(out.finished)]))
        if want("cum_log_probs") or want("output_log_probs"):
            tensors += stream.keep(self._log_prob_outputs(out, n, streaming=True))
        tensors += self._common_outputs(stream, row)
        row.add_streamed(new)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _full_response(self, stream: _Stream, row: _Row, out):
        """A row's whole output at once: the prompt (unless excluded) and each beam, padded to the longest."""
        beams = out.tokens or [[]]
        prompt = [] if row.parsed.exclude_input_in_output else row.parsed.input_ids
        p = len(prompt)
        lengths = [p + len(b) for b in beams]
        pad = row.parsed.pad_id if row.parsed.pad_id is not None else (row.parsed.end_id or 0)
        ids = np.full((1, len(beams), max(lengths)), max(pad, 0), dtype=np.int32)
        ids[0, :, :p] = prompt
        for i, b in enumerate(beams):
            ids[0, i, p : lengths[i]] = b
        t, want = pb_utils.Tensor, stream.wants
        tensors = []
        if want("output_ids"):
            tensors.append(t("output_ids", ids))
        if want("sequence_length"):
            tensors.append(t("sequence_length", np.array([lengths], dtype=np.int32)))
        if want("stream_prefix_ids"):
            tensors.append(t("stream_prefix_ids", _NO_PREFIX))
        if want("stream_final"):
            tensors.append(t("stream_final", _FINAL[True]))
        if want("cum_log_probs") or want("output_log_probs"):
            tensors += stream.keep(self._log_prob_outputs(out, None, streaming=False))
        tensors += self._common_outputs(stream, row)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _log_prob_outputs(self, out, n_new: int | None, streaming: bool) -> list:
        t = pb_utils.Tensor
        beams = max(1, len(out.tokens or [[]]))
        if out.log_probs is None and out.cum_log_probs is None and beams == 1:  # not asked for: zeros
            return [t("cum_log_probs", _NO_CUM_LOG_PROBS), t("output_log_probs", _NO_LOG_PROBS)]
        cum = out.cum_log_probs if out.cum_log_probs is not None else [0.0] * beams
        if out.log_probs is not None:
            lps = [
                list(lp[-n_new:]) if (streaming and n_new) else ([] if streaming else list(lp)) for lp in out.log_probs
            ]
        else:
            lps = [[] for _ in range(beams)]
        width = max([len(x) for x in lps] + [0])
        arr = np.zeros((1, len(lps), width), dtype=np.float32)
        for i, lp in enumerate(lps):
            arr[0, i, : len(lp)] = lp
        return [
            t("cum_log_probs", np.array([cum], dtype=np.float32)),
            t("output_log_probs", arr),
        ]

    def _final_response(self, stream: _Stream):
        """Non-decoupled: the single response of a finished request."""
        row = stream.rows[0]
        out = row.final_output
        if out.finish_reason == "error":
            return error_response(f"request failed: {out.error or 'unknown error'}")
        return self._full_response(stream, row, out)

    # -- cancellation and metrics ---------------------------------------------------------------------
    def _watch_loop(self) -> None:
        next_stats = 0.0
        while not self._stopping.wait(self.cancel_period):
            with self._lock:
                streams = list(self._streams)
            for s in streams:
                with s.lock:
                    if s.closed:
                        continue
                    try:
                        cancelled = s.request.is_cancelled()
                    except Exception:
                        cancelled = False
                if cancelled:
                    self._cancel(s)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.stats_period
                try:
                    self.metrics.update(self.executor.stats(), self.max_batch_size)
                except Exception as e:
                    log_warn(self.logger, f"updating metrics failed: {e!r}")

    def finalize(self) -> None:
        self._stopping.set()
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            self._cancel(s)
        try:
            self.executor.shutdown()
        finally:
            self._outbox.put(None)
            self._sender.join(timeout=5)
            self._watcher.join(timeout=5)
