"""The executor: a background loop that admits, schedules, runs one forward step, samples and answers.

    caller threads                      executor thread (one)
    enqueue(req) -> id  --incoming-->   _loop: new requests and cancels into the scheduler
    cancel(id)         --cancels--->    plan = scheduler.schedule()         (who runs, how many tokens)
    stats()            <--snapshot--    logits = engine.forward(step(plan)) (one packed step)
                                        sample, update requests, finish, callbacks

Only the executor thread touches the scheduler, the block manager and request state; callers meet it
through `_lock` (the inbox, the cancel set and the table of live ids). Callbacks run on the executor
thread after each step, outside the lock, and must not block.

Multi-rank engines (tensor parallel): rank 0 holds the `Executor` (the leader); every other rank calls
`run_follower`, which receives each step's `StepInput` (and the beams' KV block copies) from the leader
and runs the same forward, so the ranks' collectives line up. Only the leader schedules and samples.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.config import ExecutorConfig
from inflight_batcher.kv_offload import HostKVPool
from inflight_batcher.request import Limits, ListPrefix, Output, Request, RequestStatus, validate_request
from inflight_batcher.sampler import (
    PLACEHOLDER,
    PendingSample,
    add_placeholder,
    append_token,
    beam_step,
    drop_placeholders,
)
from inflight_batcher.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from tensorrt_llm._utils import index_tensor
from tensorrt_llm.runtime.engine import Engine
from tensorrt_llm.runtime.kv_cache import KVCachePool
from tensorrt_llm.runtime.step import StepInput, build_step_input

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """`enqueue` refused a request because `max_queue_size` requests already wait."""


@dataclass
class IterationStats:
    """A snapshot for metrics (names follow TensorRT-LLM's; spec/triton_interface.md §9). `Executor.stats()`
    returns a copy; the executor updates its own record in place, under its lock, every step."""

    timestamp: float = 0.0  # time.time() of this snapshot
    iteration: int = 0  # steps run so far
    iteration_ms: float = 0.0  # wall time of the last step
    active: int = 0  # admitted or paused: in the batch manager
    queued: int = 0  # waiting for first admission
    paused: int = 0  # preempted, waiting to be resumed
    scheduled: int = 0  # requests in the last step
    context_requests: int = 0
    context_tokens: int = 0
    generation_requests: int = 0
    max_batch_size: int = 0
    max_num_tokens: int = 0
    max_blocks: int = 0
    used_blocks: int = 0
    free_blocks: int = 0  # blocks an allocation may take: blank ones and cached ones (prefix reuse)
    cached_blocks: int = 0  # of the free ones: blocks keeping a finished request's KV for reuse
    reused_blocks: int = 0  # blocks taken from the cache instead of computed, since start
    reused_tokens: int = 0  # prompt tokens not computed thanks to them, since start
    max_host_blocks: int = 0  # host offload (kv_cache_host_memory_bytes): blocks of the host pool
    host_blocks: int = 0  # of them, those holding an evicted block for reuse
    offloaded_blocks: int = 0  # cached blocks copied to the host when evicted from the device, since start
    onboarded_blocks: int = 0  # host blocks copied back to the device for a request (counted reused too)
    tokens_per_block: int = 0
    completed: int = 0  # finished requests by outcome, since start
    cancelled: int = 0
    failed: int = 0
    preemptions: int = 0
    failed_steps: int = 0  # steps whose forward pass or sampling raised (then run one request at a time)


class Executor:
    def __init__(
        self,
        engine: Engine,
        config: ExecutorConfig | None = None,
        on_outputs: Callable[[list[Output]], None] | None = None,
        kv_cache: KVCachePool | None = None,
    ) -> None:
        """`kv_cache`: a pool to run on instead of allocating one from `config` (`make_kv_cache`), for a
        caller that runs one executor after another on the same memory (`ModelRunner`); it must not be
        in use by another live executor. Its CUDA graphs are captured once: an executor finds them."""
        config = config or ExecutorConfig()
        self.engine = engine
        # Called once per step on the executor thread with every output of the step (after the
        # requests' own callbacks): a server hands them over in one piece instead of one per request.
        self.on_outputs = on_outputs
        self.config = config
        self.device = engine.device
        b, m = engine.config.build, engine.config.model
        # The executor may lower the engine's build limits, never raise them (buffers are sized by them).
        self.max_batch_size = min(config.max_batch_size or b.max_batch_size, b.max_batch_size)
        self.max_num_tokens = min(config.max_num_tokens or b.max_num_tokens, b.max_num_tokens)
        for name, asked, built in [
            ("max_batch_size", config.max_batch_size, b.max_batch_size),
            ("max_num_tokens", config.max_num_tokens, b.max_num_tokens),
            ("max_beam_width", config.max_beam_width, b.max_beam_width),
        ]:
            if asked is not None and asked > built:
                log.warning("%s=%d is above the engine's build value %d: using %d", name, asked, built, built)
        eos = m.eos_token_id if isinstance(m.eos_token_id, list) else [m.eos_token_id]
        eos = [e for e in eos if e is not None]
        self.default_end_id = eos[0] if eos else -1
        self.default_end_ids = eos[1:]  # a checkpoint's further eos ids end a request too
        self.vocab_size = m.vocab_size
        self.limits = Limits(
            vocab_size=m.vocab_size,
            max_input_len=b.max_input_len,
            max_seq_len=b.max_seq_len,
            max_beam_width=min(config.max_beam_width, b.max_beam_width),
            max_batch_size=self.max_batch_size,
            max_num_tokens=self.max_num_tokens,
            enable_chunked_context=config.enable_chunked_context,
        )
        self.world_size = engine.config.mapping.world_size
        if self.world_size > 1 and engine.config.mapping.rank != 0:
            raise ValueError(f"rank {engine.config.mapping.rank} is a follower: call run_follower, not Executor")
        self.kv: KVCachePool = kv_cache if kv_cache is not None else make_kv_cache(engine, config)
        num_blocks = self.kv.num_blocks
        if config.cuda_graphs:
            _capture_graphs(engine, self.kv, self.max_batch_size)
        # KV block copies the followers have not seen, in order: ("copy", beams' copies), ("move", host moves)
        self._pending_copies: list[tuple[str, tuple]] = []
        host_blocks = _host_blocks(engine, config)
        self.host_kv = HostKVPool(self.kv, host_blocks) if host_blocks else None
        self.block_manager = BlockManager(num_blocks, b.tokens_per_block, config.enable_kv_cache_reuse, host_blocks)
        assert self.block_manager.released == self.kv.scratch_block  # handed-back entries read the scratch block
        self.scheduler = Scheduler(
            self.block_manager,
            config.batch_scheduler_policy,
            self.max_batch_size,
            self.max_num_tokens,
            config.enable_chunked_context,
            engine.config.model.longrope_from,
        )
        model = engine.config.model
        windows = [model.attention_window(i) for i in range(model.num_hidden_layers)]
        if all(windows):  # every layer windowed (Mistral, Phi-3, StarCoder2 ...): out-of-window blocks go back
            self.scheduler.window = max(windows)
            self.scheduler.sinks = model.sink_tokens  # their blocks stay (attention sinks)

        self._lock = threading.Condition()
        self._incoming: deque[Request] = deque()
        self._cancels: set[int] = set()
        self._live: dict[int, Request] = {}  # id -> request, from enqueue until its final callback
        self._ids = itertools.count(1)
        self._stopping = False  # the loop ends at its next iteration
        self._closed = False  # enqueue refuses new requests (set first by shutdown)
        self._counts = {"completed": 0, "cancelled": 0, "failed": 0, "preemptions": 0, "failed_steps": 0}
        self._stats = IterationStats(
            max_batch_size=self.max_batch_size,
            max_num_tokens=self.max_num_tokens,
            max_blocks=num_blocks,
            free_blocks=num_blocks,
            max_host_blocks=host_blocks,
            tokens_per_block=b.tokens_per_block,
        )
        # Overlapped scheduling (see `_step`); followers would need the device-side token feed too.
        self.overlap = config.overlap_scheduling and self.world_size == 1
        self._inflight: _InFlight | None = None  # launched step whose tokens the host has not read
        self._thread = threading.Thread(target=self._loop, name="inflight-batcher", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_dir(
        cls,
        engine_dir: str | Path,
        config: ExecutorConfig | None = None,
        device: str | None = None,
        on_outputs: Callable[[list[Output]], None] | None = None,
    ) -> Executor:
        return cls(Engine.from_dir(engine_dir, device=device), config, on_outputs)

    # -- caller side (any thread) ---------------------------------------------------------------------
    def enqueue(self, request: Request) -> int:
        """Queue `request`; returns its id. ValueError for a bad request, QueueFullError when full."""
        return self.enqueue_batch([request])[0]

    def enqueue_batch(self, requests: list[Request]) -> list[int]:
        """Check every request, then queue them all at once (the loop sees them in one intake, so the
        first step can hold every one of them), or none; their ids in order."""
        for r in requests:
            self._check(r)
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            queued = len(self._incoming) + self._stats.queued
            limit = self.config.max_queue_size
            if limit is not None and queued + len(requests) > limit:
                raise QueueFullError(f"queue is full ({limit} requests waiting)")
            now = time.time_ns()
            for r in requests:
                r.request_id = next(self._ids)
                r.perf.arrival_time_ns = now
                self._live[r.request_id] = r
                self._incoming.append(r)
            self._lock.notify_all()
        return [r.request_id for r in requests]

    def _check(self, request: Request) -> None:
        """Validate `request` against the engine and cache, and fill its defaults (no lock needed)."""
        if request.request_id is not None:
            raise ValueError(f"request was already enqueued (request_id={request.request_id})")
        validate_request(request, self.limits)
        self.scheduler.check_fits(request)  # reads only the cache size: safe off the loop thread
        if request.end_id is None:
            request.end_id = self.default_end_id
            request.end_ids = [*(request.end_ids or []), *self.default_end_ids]
        request.end_set = frozenset(t for t in [request.end_id, *(request.end_ids or [])] if t >= 0)
        if request.pad_id is None:
            request.pad_id = request.end_id
        sp = request.sampling
        # Seeds are UINT64 (TensorRT-LLM's type); the noise hash works on 62 bits in int64 tensors, where a
        # seed >= 2**63 once overflowed the whole step. Folded here, so no value can reach the step.
        request.seed = sp.random_seed % 2**62 if sp.random_seed is not None else random.getrandbits(62)

    def cancel(self, request_id: int) -> bool:
        """Ask to end a request; it gets a final callback with finish_reason "cancelled". False when
        the id is unknown or the request already ended."""
        with self._lock:
            if request_id not in self._live:
                return False
            self._cancels.add(request_id)
            self._lock.notify_all()
            return True

    def stats(self) -> IterationStats:
        with self._lock:
            s = self._stats
            return replace(s, timestamp=time.time(), queued=s.queued + len(self._incoming))

    def shutdown(self, drain_timeout: float = 0.0, timeout: float | None = 30.0) -> None:
        """Stop admitting (enqueue raises RuntimeError), let live requests run for up to `drain_timeout`
        seconds (SIGTERM under load), then end the rest with finish_reason "cancelled" and stop the loop.
        The KV cache is released once the loop has stopped. Idempotent."""
        with self._lock:
            self._closed = True
            end = time.monotonic() + drain_timeout
            while self._live and drain_timeout > 0 and (left := end - time.monotonic()) > 0:
                self._lock.wait(left)
            self._stopping = True
            self._lock.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.kv = None  # type: ignore[assignment]  # frees the pool's memory with the executor
                self.host_kv = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def generate(self, requests: list[Request], timeout: float | None = None) -> list[Output]:
        """Run `requests` to completion; their final Outputs in the same order (tokens hold all).
        A bad request raises before any is queued."""
        finals: dict[int, Output] = {}
        done = threading.Event()

        def wrap(user_cb):
            def cb(out: Output) -> None:
                try:
                    if user_cb is not None:
                        user_cb(out)
                finally:  # a raising user callback must not leave generate() waiting
                    if out.finished:
                        finals[out.request_id] = out
                        if len(finals) == len(requests):
                            done.set()

            return cb

        if not requests:
            return []
        for r in requests:
            r.callback = wrap(r.callback)
        ids = self.enqueue_batch(requests)  # all arrive together: the first step sees every one of them
        if not done.wait(timeout):
            raise TimeoutError(f"{len(requests) - len(finals)} of {len(requests)} requests did not finish")
        return [finals[i] for i in ids]

    # -- executor thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._run_loop()
        except BaseException as e:  # the loop itself broke: end every request with the error, refuse new ones
            log.exception("executor loop died")
            with self._lock:
                self._closed = True
                live = [r for r in self._live.values() if not r.status.finished]
            msg, outputs = f"executor loop died: {e!r}", []
            for r in live:
                try:
                    outputs.append(self._finish(r, RequestStatus.FINISHED_ERROR, msg))
                except Exception:  # a request the scheduler never took: end it without its bookkeeping
                    r.status, r.error = RequestStatus.FINISHED_ERROR, msg
                    outputs.append((r, self._output(r)))
            self._deliver(outputs)

    def _run_loop(self) -> None:
        if self.device.type == "cuda" and self.device.index is not None:
            # A thread starts on device 0; Triton launches on the thread's current device (an engine on cuda:1).
            torch.cuda.set_device(self.device.index)
        while True:
            with self._lock:
                while not (
                    self._incoming or self._cancels or self._stopping or self.scheduler.has_work() or self._inflight
                ):
                    self._lock.wait()
                incoming, self._incoming = list(self._incoming), deque()
                # Still queued until the step's stats say otherwise: enqueue's queue limit never
                # undercounts, even while the step runs.
                self._stats.queued += len(incoming)
                cancelled = [self._live[i] for i in self._cancels if i in self._live]
                self._cancels = set()
                stopping = self._stopping
                live = list(self._live.values()) if stopping else []
            outputs: list[tuple[Request, Output]] = []
            for r in incoming:
                self.scheduler.add(r)
            for r in cancelled:
                if not r.status.finished:
                    outputs.append(self._finish(r, RequestStatus.FINISHED_CANCELLED))
            if stopping:
                self._inflight = None  # its requests end below; its results are not needed
                for r in live:
                    if not r.status.finished:
                        outputs.append(self._finish(r, RequestStatus.FINISHED_CANCELLED, "executor shut down"))
                self._deliver(outputs)
                if self.world_size > 1:
                    _broadcast(("stop",))
                return
            try:
                outputs += self._step()
            except Exception as e:  # a bug outside the forward pass: fail everyone rather than hang
                log.exception("executor step failed")
                for r in list(self.scheduler.running) + list(self.scheduler.waiting):
                    outputs.append(self._finish(r, RequestStatus.FINISHED_ERROR, f"{type(e).__name__}: {e}"))
            self._deliver(outputs)

    def _step(self) -> list[tuple[Request, Output]]:
        """One iteration. Overlapped: step n+1 is scheduled and launched while step n still runs on the
        device, then step n's tokens are read and applied (its requests' next tokens are placeholders
        meanwhile, and step n+1 takes its input ids from step n's sampled tokens on the device)."""
        t0 = time.perf_counter()
        outputs: list[tuple[Request, Output]] = []
        # A request paused by this plan keeps its placeholder until `prev` is read below, before it can
        # be resumed (never in the plan that paused it), so it is recomputed from real tokens.
        prev, self._inflight = self._inflight, None
        plan = self.scheduler.schedule()
        self._counts["preemptions"] += len(plan.preempted)
        launched = None
        if plan:
            computed = [(r, r.num_computed_tokens) for r in plan.requests]
            try:
                launched = self._launch(plan, prev)
            except Exception as e:
                log.exception("forward step failed; again one request at a time")
                for r, n in computed:  # the launch may have counted the step's tokens before it failed
                    r.num_computed_tokens = n
                if prev is not None:  # its tokens are good: keep them (and no placeholder is left)
                    outputs += self._resolve(prev)
                    prev = None
                outputs += self._isolate(plan, e)
        elif prev is None:
            time.sleep(0.001)  # nothing schedulable yet (should not happen: check_fits refuses those)
        if prev is not None:
            outputs += self._resolve(prev)
        if launched is not None:
            if launched.deferred:
                self._inflight = launched
            else:
                outputs += self._resolve(launched)
        try:
            self._update_stats(plan, (time.perf_counter() - t0) * 1e3, bool(plan))
        except Exception:  # stats must never cost the step's outputs (finals would be lost)
            log.exception("statistics update failed")
        return outputs

    def _isolate(self, plan: SchedulerOutput, error: Exception) -> list[tuple[Request, Output]]:
        """The step that failed, again one request at a time: only a request whose own step fails ends
        with an error, so one poison request never takes the others down (a passing failure costs
        nothing). A few single-request steps in place of one: rare, and cheap next to failing them all."""
        self._counts["failed_steps"] += 1
        if self.world_size > 1:  # the followers ran the failed step in lockstep: no retry of part of it
            msg = f"{type(error).__name__}: {error}"
            return [self._finish(r, RequestStatus.FINISHED_ERROR, msg) for r in plan.requests if not r.status.finished]
        outputs: list[tuple[Request, Output]] = []
        for r in plan.requests:
            if r.status.finished:
                continue
            alone = SchedulerOutput(
                [s for s in plan.context if s.request is r], [s for s in plan.generation if s.request is r]
            )
            computed = r.num_computed_tokens
            try:
                outputs += self._resolve(self._launch(alone, None))
            except Exception as e:
                r.num_computed_tokens = computed
                log.warning("request %s fails its step alone: %s: %s", r.request_id, type(e).__name__, e)
                outputs.append(self._finish(r, RequestStatus.FINISHED_ERROR, f"{type(e).__name__}: {e}"))
        return outputs

    @torch.inference_mode()
    def _launch(self, plan: SchedulerOutput, prev: _InFlight | None) -> _InFlight:
        """Queue the plan's forward step and its sampling on the device; nothing here waits for it."""
        seqs = plan.seqs
        self._move_blocks()  # host offload: the plan's offloads and onboards, before its forward
        if self.world_size > 1:
            step = self._step_input(plan, "cpu")
            _broadcast(("step", self._pending_copies, step))
            self._pending_copies = []
            step = _to_device(step, self.device)
        else:
            step = self._step_input(plan, self.device)
        if prev is not None and prev.placeholder_rows:
            self._feed_placeholders(plan, prev, step)
        logits = self.engine.forward(step, self.kv)  # [B, V]: the last new token of each sequence
        for r, n in plan.new_tokens_per_request:  # once per request, not per beam
            r.num_computed_tokens += n
        rows = [i for i, s in enumerate(seqs) if s.sample]
        if not rows:
            if self.block_manager.enable_reuse:
                # Nothing to read back: its KV is published now (later steps run after it on the stream).
                self._publish(seqs, ())
            return _InFlight([], None, {}, deferred=False)
        sampled = [seqs[i] for i in rows]
        if len(rows) < len(seqs):  # some sequences only advanced a context chunk: no token for them
            logits = logits[index_tensor(rows, logits.device)]
        pending = PendingSample(logits, sampled, self.vocab_size)
        deferred = self.overlap and all(s.request.overlappable for s in sampled)
        placeholders = {}
        if deferred:
            for j, s in enumerate(sampled):
                if add_placeholder(s.request):
                    placeholders[id(s.request)] = j
        return _InFlight(sampled, pending, placeholders, deferred, seqs)

    def _feed_placeholders(self, plan: SchedulerOutput, prev: _InFlight, step: StepInput) -> None:
        """Generation rows whose input token is a placeholder of `prev` take it from `prev`'s sampled
        tokens, on the device. Packed rows: the context tokens, then one per generation sequence."""
        base = plan.num_context_tokens
        dst, src = [], []
        for j, s in enumerate(plan.generation):
            row = prev.placeholder_rows.get(id(s.request))
            if row is not None and s.seq.tokens[s.start] == PLACEHOLDER:
                dst.append(base + j)
                src.append(row)
        if dst:
            idx = index_tensor(dst + src, step.input_ids.device)
            n = len(dst)
            step.input_ids.index_copy_(0, idx[:n], prev.pending.tokens.index_select(0, idx[n:]))

    @torch.inference_mode()
    def _resolve(self, inflight: _InFlight) -> list[tuple[Request, Output]]:
        """Wait for a launched step's tokens and apply them: append, end, stream."""
        if inflight.pending is None:
            return []
        result = inflight.pending.result()
        sampled = inflight.sampled
        if self.block_manager.enable_reuse:
            # Before any request below ends (and frees its table): the step's full blocks become findable.
            bad = [s.request for s, b in zip(sampled, result.bad_logits, strict=True) if b]
            self._publish(inflight.seqs, bad)
        outputs, copies, now = [], [], time.time_ns()
        beam_done: set[int] = set()
        rows = zip(sampled, result.tokens, result.log_probs, result.bad_logits, strict=True)
        for s, token, log_prob, bad_logits in rows:
            req = s.request
            if req.status.finished:
                continue  # a beam sibling failed it, it was cancelled, or it ended a step earlier
            if bad_logits:
                outputs.append(self._finish(req, RequestStatus.FINISHED_ERROR, "logits are NaN or inf"))
                continue
            if not req.perf.first_token_time_ns:
                req.perf.first_token_time_ns = now
            req.perf.last_token_time_ns = now
            if req.is_beam_search:
                if req.request_id in beam_done:
                    continue
                beam_done.add(req.request_id)
                beam_step(req, result.beam_log_probs[req.request_id], self.block_manager, copies)
            else:
                append_token(req, token, log_prob)
            if req.status.finished:
                outputs.append(self._finish(req, req.status))
            elif req.streaming and req.num_resolved > req.num_streamed:
                outputs.append((req, self._output(req)))
        if copies:
            self._move_blocks()  # an offload queued by beam_step reads a block a copy below may overwrite
            _copy_blocks(self.kv, copies)
            if self.world_size > 1:
                self._pending_copies.append(("copy", copies))
        return outputs

    def _move_blocks(self) -> None:
        """Host offload: perform the block manager's queued offloads and onboards now, batched, on the
        device stream (before the next forward or beam block copy; the followers do the same)."""
        if self.host_kv is None:
            return
        offloads, onboards = self.block_manager.pending_moves()
        if offloads or onboards:
            self.host_kv.apply(self.kv, offloads, onboards)
            if self.world_size > 1:
                self._pending_copies.append(("move", (offloads, onboards)))

    def _publish(self, seqs: list[ScheduledSeq], failed) -> None:
        """Prefix reuse: the blocks these sequences filled hold computed KV (not of a request whose logits
        were NaN or inf: its KV may be too). Called only with reuse on: nothing of it on the plain path."""
        for s in seqs:
            if s.request not in failed and not s.request.status.finished:
                self.scheduler.publish(s)

    def _step_input(self, plan: SchedulerOutput, device: torch.device | str) -> StepInput:
        """The plan as a `StepInput` on `device` (the host when it must be broadcast to followers)."""
        seqs = plan.seqs
        offsets = None
        if self.scheduler.longrope_from is not None:  # a request's tokens take its KV's rotary factors
            offsets = [self.engine.config.model.rope_offset(s.request.num_tokens) for s in seqs]
        return build_step_input(
            [s.seq.tokens[s.start : s.start + s.num_new] for s in seqs],
            [s.start for s in seqs],
            [s.block_table for s in seqs],
            self.block_manager.tokens_per_block,
            device=device,
            rope_offsets=offsets,
        )

    def _finish(self, req: Request, status: RequestStatus, error: str | None = None) -> tuple[Request, Output]:
        """End `req`: free its blocks, drop it from the scheduler, build its final output."""
        self.scheduler.remove(req)
        drop_placeholders(req)
        req.status = status
        req.error = error
        key = {
            RequestStatus.FINISHED_CANCELLED: "cancelled",
            RequestStatus.FINISHED_ERROR: "failed",
        }.get(status, "completed")
        self._counts[key] += 1
        return req, self._output(req)

    def _output(self, req: Request) -> Output:
        """The next Output of `req`: new tokens since the last one; final when `req` finished."""
        P = req.prompt_len
        finished = req.status.finished
        beams = [s for _, s in req.finished_beams] if req.finished_beams and finished else req.seqs
        lp = req.return_log_probs and bool(beams)
        if not finished and beams and not req.is_beam_search:
            # A streamed chunk: views of what is resolved (those items never change), the new tokens copied.
            # Placeholders (tokens still on the device) are never part of an output.
            seq = beams[0]
            end = len(seq.tokens) - req.num_pending
            tokens = [ListPrefix(seq.tokens, P, end)]
            new = [seq.tokens[P + req.num_streamed : end]]
            log_probs = [ListPrefix(seq.log_probs, 0, len(seq.log_probs))] if lp else None
            req.num_streamed = end - P
        else:
            tokens = [s.tokens[P : len(s.tokens) - req.num_pending] for s in beams] or [[]]
            # beams reorder: every output of a beam request carries whole beams
            new = tokens if req.is_beam_search else [tokens[0][req.num_streamed :]]
            log_probs = [list(s.log_probs) for s in beams] if lp else None
            req.num_streamed = len(tokens[0])
        return Output(
            request_id=req.request_id,
            new_tokens=new,
            tokens=tokens,
            finished=finished,
            finish_reason=req.status.finish_reason if finished else None,
            error=req.error,
            cum_log_probs=[s.cum_log_prob for s in beams] if lp else None,
            log_probs=log_probs,
            client_id=req.client_id,
            perf=replace(req.perf) if req.return_perf_metrics else None,
        )

    def _deliver(self, outputs: list[tuple[Request, Output]]) -> None:
        if not outputs:
            return
        with self._lock:
            for req, out in outputs:
                if out.finished:
                    self._live.pop(req.request_id, None)
            if not self._live:
                self._lock.notify_all()  # a draining shutdown waits for this
        for req, out in outputs:
            if req.callback is None:
                continue
            try:
                req.callback(out)
            except Exception:
                log.exception("callback of request %s raised", req.request_id)
        if self.on_outputs is not None:
            try:
                self.on_outputs([out for _, out in outputs])
            except Exception:
                log.exception("on_outputs raised")

    def _update_stats(self, plan: SchedulerOutput, ms: float, ran: bool) -> None:
        sch, bm = self.scheduler, self.block_manager
        paused = sum(1 for r in sch.waiting if r.status == RequestStatus.PAUSED)
        n_context = len({id(s.request) for s in plan.context})
        with self._lock:  # in place: a dataclasses.replace of this record cost ~4.6 us a step (CPU)
            st = self._stats
            st.timestamp = time.time()
            st.iteration += int(ran)
            st.iteration_ms = ms
            st.active = len(sch.running) + paused
            st.queued = len(sch.waiting) - paused
            st.paused = paused
            st.scheduled = len(plan.requests)
            st.context_requests = n_context
            st.context_tokens = plan.num_context_tokens
            st.generation_requests = len(plan.requests) - n_context  # a request is in one phase per step
            st.used_blocks = bm.num_used
            st.free_blocks = bm.num_free
            st.cached_blocks = bm.num_cached
            st.reused_blocks = bm.reused_blocks
            st.reused_tokens = bm.reused_tokens
            st.host_blocks = bm.num_host_cached
            st.offloaded_blocks = bm.offloaded_blocks
            st.onboarded_blocks = bm.onboarded_blocks
            for key, count in self._counts.items():  # completed, cancelled, failed, preemptions, failed_steps
                setattr(st, key, count)


@dataclass
class _InFlight:
    """A launched step: the rows that sample, their sampling (on the device), and for each
    request given a placeholder its row in `sampled`. `deferred`: it may stay unread while the next
    step is scheduled (no row needs its tokens on the host first: beams, penalties, bad word prefixes)."""

    sampled: list[ScheduledSeq]
    pending: PendingSample | None
    placeholder_rows: dict[int, int]
    deferred: bool
    seqs: list[ScheduledSeq] = field(default_factory=list)  # every sequence of the step (prefix reuse)


# -- helpers shared by the leader and the followers ---------------------------------------------------------
def make_kv_cache(engine: Engine, config: ExecutorConfig | None = None) -> KVCachePool:
    """The KV pool an executor (or `run_follower`) of `config` allocates. Every rank of a multi-rank engine
    must call it together: they agree on the smallest block count any of them can hold."""
    return engine.make_kv_cache(_kv_blocks(engine, config or ExecutorConfig()))


def _capture_graphs(engine: Engine, kv: KVCachePool, max_batch_size: int) -> None:
    """CUDA graphs of `kv`'s steps up to `max_batch_size`, unless the engine holds them already (a pool
    reused by one executor after another is captured once). The same decision on every rank."""
    g = engine.graphs
    if g is None or g.kv is not kv or g.decode_buckets[-1] < max_batch_size:
        engine.capture_cuda_graphs(kv, max_batch_size)


def _kv_blocks(engine: Engine, config: ExecutorConfig) -> int:
    """KV blocks of this executor; with several ranks, the smallest any rank can hold (they must agree)."""
    n = engine.num_kv_blocks(config.kv_cache_free_gpu_mem_fraction, config.max_tokens_in_paged_kv_cache)
    if engine.config.mapping.world_size > 1:
        everyone: list[int | None] = [None] * engine.config.mapping.world_size
        torch.distributed.all_gather_object(everyone, n)
        n = min(everyone)
    return n


def _host_blocks(engine: Engine, config: ExecutorConfig) -> int:
    """Blocks of the host offload pool (`kv_cache_host_memory_bytes`); the same on every rank."""
    size = config.kv_cache_host_memory_bytes
    if not size:
        return 0
    if not config.enable_kv_cache_reuse:
        log.warning("kv_cache_host_memory_bytes=%d without enable_kv_cache_reuse: no host offload", size)
        return 0
    per_block = engine.kv_bytes_per_block()
    if size < per_block:
        log.warning("kv_cache_host_memory_bytes=%d is less than one KV block (%d bytes)", size, per_block)
    return size // per_block


def _broadcast(msg: tuple) -> tuple:
    box = [msg]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _to_device(step: StepInput, device: torch.device) -> StepInput:
    if device.type == "cpu":
        return step
    moved = {
        f: getattr(step, f).to(device, non_blocking=True)
        for f in (
            "input_ids",
            "positions",
            "seq_lens",
            "context_lens",
            "block_tables",
            "slot_mapping",
            "logits_indices",
        )
    }
    return replace(step, **moved)


def _copy_blocks(kv: KVCachePool, copies: list[tuple[int, int]]) -> None:
    """Copy-on-write of beams' partial last blocks, before the next step writes into them.
    kv.data: [L, 2, num_blocks, tokens_per_block, Hkv, D]"""
    # Host lists copied without waiting for the stream (torch.tensor(..., device=cuda) would block on it).
    src = torch.tensor([c[0] for c in copies]).to(kv.data.device, non_blocking=True)
    dst = torch.tensor([c[1] for c in copies]).to(kv.data.device, non_blocking=True)
    # (an FP8 cache is copied as bytes: indexed copies of float8 tensors are not implemented everywhere)
    data = kv.data.view(torch.uint8) if kv.data.dtype == torch.float8_e4m3fn else kv.data
    data[:, :, dst] = data[:, :, src]


@torch.inference_mode()
def run_follower(engine: Engine, config: ExecutorConfig | None = None, kv_cache: KVCachePool | None = None) -> None:
    """The loop of ranks 1.. of a multi-rank engine: run every step rank 0's `Executor` broadcasts, until
    it shuts down. `config` must be the leader's (the KV cache is sized the same way); `kv_cache` as the
    Executor's (the leader passes one exactly when the followers do)."""
    config = config or ExecutorConfig()
    if engine.config.mapping.rank == 0:
        raise ValueError("rank 0 is the leader: it runs the Executor, not run_follower")
    kv = kv_cache if kv_cache is not None else make_kv_cache(engine, config)
    host_blocks = _host_blocks(engine, config)
    host_kv = HostKVPool(kv, host_blocks) if host_blocks else None
    if config.cuda_graphs:
        # The same buckets as the leader's: a replayed step pads its batch, and the ranks' collectives
        # must have the same sizes (capture runs collectives too, in the same order on every rank).
        b = engine.config.build
        _capture_graphs(engine, kv, min(config.max_batch_size or b.max_batch_size, b.max_batch_size))
    while True:
        msg = _broadcast((None,))
        if msg[0] == "stop":
            return
        _, copies, step = msg
        for kind, ops in copies:  # in the leader's order
            if kind == "copy":
                _copy_blocks(kv, ops)
            else:
                host_kv.apply(kv, *ops)
        engine.forward(_to_device(step, engine.device), kv)
