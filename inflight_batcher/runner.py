"""`ModelRunner`: TensorRT-LLM's offline interface (`trtllm-run`, tests, benchmarks) over the `Executor`.

`generate` turns its prompts and arguments into `Request`s, hands them to an executor in one intake (the
first step holds every prompt that fits) and returns when all have finished: offline generation runs
serving's loop, with its scheduling, overlap, CUDA graphs and its one set of rules (end ids, stop and
bad words, penalties, seeds, beam search). The runner adds only TensorRT-LLM's shapes: `output_ids`
[B, beams, max_input + max_new] (prompt, generated tokens, then `pad_id`).

The runner owns the KV pool and the CUDA graphs captured over it. On one rank it keeps one executor on
that pool for its life (shut down when the runner is dropped), so calls cost no thread start, and calls
from several threads (or a stream still open) batch together in flight. A multi-rank engine runs an
executor per call: rank 0's broadcasts its steps, ranks 1.. run them in `generate` (`run_follower`) until
it stops, then every rank returns the same result; one call at a time there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from inflight_batcher.config import ExecutorConfig
from inflight_batcher.executor import Executor, make_kv_cache, run_follower
from inflight_batcher.request import Output, Request, SamplingParams
from tensorrt_llm.runtime.engine import Engine


def _ids(x: torch.Tensor | Sequence[int]) -> list[int]:
    return x.flatten().tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x]


class _Outputs:
    """The result tensors of one call, filled in place as outputs arrive: `output_ids` [B, beams, width],
    `sequence_lengths` [B, beams], and with log-probs `log_probs` [B, beams, max_new], `cum_log_probs`
    [B, beams]."""

    def __init__(self, prompts: list[list[int]], beams: int, max_new: int, pad_id: int, log_probs: bool) -> None:
        B = len(prompts)
        self.prompt_lens = [len(p) for p in prompts]
        self.beams = beams
        self.ids = torch.full((B, beams, max(self.prompt_lens) + max_new), pad_id, dtype=torch.int32)
        for i, p in enumerate(prompts):
            self.ids[i, :, : len(p)] = torch.tensor(p, dtype=torch.int32)
        self.lens = torch.tensor(self.prompt_lens, dtype=torch.int32)[:, None].repeat(1, beams)
        self.log_probs = torch.zeros(B, beams, max_new) if log_probs else None
        self.cum_log_probs = torch.zeros(B, beams) if log_probs else None

    def add(self, i: int, out: Output) -> None:
        """An output of prompt `i`. Without beams, tokens only grow: only the new ones are written."""
        P = self.prompt_lens[i]
        for b, toks in enumerate(out.tokens[: self.beams]):
            start = int(self.lens[i, b]) - P if self.beams == 1 else 0  # beams come whole, once
            if len(toks) > start:
                self.ids[i, b, P + start : P + len(toks)] = torch.tensor(toks[start:], dtype=torch.int32)
            self.lens[i, b] = P + len(toks)
            if self.log_probs is not None and out.log_probs is not None:
                lps = out.log_probs[b]
                if len(lps) > start:
                    self.log_probs[i, b, start : len(lps)] = torch.tensor(lps[start:])
                self.cum_log_probs[i, b] = out.cum_log_probs[b]

    def result(self, as_dict: bool, copy: bool) -> torch.Tensor | dict:
        """`copy`: a snapshot that later outputs do not change (streaming)."""
        ids = self.ids.clone() if copy else self.ids
        if not as_dict:
            return ids
        d = {"output_ids": ids, "sequence_lengths": self.lens.clone() if copy else self.lens}
        if self.log_probs is not None:
            d["log_probs"] = self.log_probs.clone() if copy else self.log_probs
            d["cum_log_probs"] = self.cum_log_probs.clone() if copy else self.cum_log_probs
        return d


class ModelRunner:
    """TensorRT-LLM's `ModelRunner` (`from_dir`, `generate`) over the executor (see the module's doc)."""

    def __init__(self, engine: Engine, max_kv_blocks: int | None = None, cuda_graphs: bool = True) -> None:
        """`max_kv_blocks`: size of the KV pool (default: 90 % of the free GPU memory; on CPU room for
        max_batch_size full-length sequences). A batch larger than the pool runs in waves."""
        self.engine = engine
        self.config = engine.config
        b = engine.config.build
        self.executor_config = ExecutorConfig(
            max_beam_width=b.max_beam_width,
            enable_chunked_context=True,  # a prompt over max_num_tokens runs over several steps
            cuda_graphs=cuda_graphs,
        )
        sizing = ExecutorConfig()
        if max_kv_blocks:
            sizing = ExecutorConfig(
                kv_cache_free_gpu_mem_fraction=1.0, max_tokens_in_paged_kv_cache=max_kv_blocks * b.tokens_per_block
            )
        self.kv = make_kv_cache(engine, sizing)  # every rank together: they agree on its size
        if cuda_graphs:  # captured here, once: the executors find them
            engine.capture_cuda_graphs(self.kv, b.max_batch_size)
        # One rank: one executor for the runner's life (calls from several threads batch together), shut
        # down when the runner goes. Several ranks: one per call (`_leader`), one call at a time.
        self.executor: Executor | None = None
        if self.world_size == 1:
            self.executor = Executor(engine, self.executor_config, _route, kv_cache=self.kv)
            weakref.finalize(self, self.executor.shutdown)
        self._busy = threading.Lock()

    @classmethod
    def from_dir(
        cls,
        engine_dir: Path | str,
        device: str | torch.device | None = None,
        rank: int = 0,
        kv_cache_free_gpu_mem_fraction: float = 0.9,
        max_tokens_in_paged_kv_cache: int | None = None,
        cuda_graphs: bool = True,
    ) -> ModelRunner:
        engine = Engine.from_dir(engine_dir, device, rank)
        blocks = engine.num_kv_blocks(kv_cache_free_gpu_mem_fraction, max_tokens_in_paged_kv_cache)
        return cls(engine, blocks, cuda_graphs)

    @property
    def vocab_size(self) -> int:
        return self.config.model.vocab_size

    @property
    def rank(self) -> int:
        return self.config.mapping.rank

    @property
    def world_size(self) -> int:
        return self.config.mapping.world_size

    def _check(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """The batch as a whole, and messages naming the prompt; `Request` and the executor check the rest."""
        b = self.config.build
        if not prompts:
            raise ValueError("batch_input_ids is empty")
        if len(prompts) > b.max_batch_size:
            raise ValueError(f"batch of {len(prompts)} exceeds the engine's max_batch_size {b.max_batch_size}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) > b.max_input_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens, over the engine's max_input_len {b.max_input_len}")
            if isinstance(max_new_tokens, int) and len(p) + max_new_tokens > b.max_seq_len:
                raise ValueError(
                    f"prompt {i} ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the engine's "
                    f"max_seq_len {b.max_seq_len}"
                )
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size}): {bad[:5]}")

    def generate(
        self,
        batch_input_ids: Sequence[torch.Tensor | Sequence[int]],
        max_new_tokens: int = 16,
        end_id: int | None = None,
        pad_id: int | None = None,
        temperature: float | None = 1.0,
        top_k: int = 1,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        random_seed: int | None = None,
        num_beams: int = 1,
        stop_words_list: Sequence[Sequence[int]] | None = None,
        bad_words_list: Sequence[Sequence[int]] | None = None,
        streaming: bool = False,
        output_log_probs: bool = False,
        return_dict: bool = False,
        output_sequence_lengths: bool = False,
        length_penalty: float = 1.0,
        early_stopping: bool | None = None,
        min_length: int = 0,
    ) -> torch.Tensor | dict | Iterator[torch.Tensor | dict]:
        """Generates up to `max_new_tokens` after each prompt. Returns `output_ids` [B, num_beams,
        max_in + max_new] (prompt then output, padded with `pad_id`; beams best first), or with
        `return_dict` a dict that also holds `sequence_lengths` [B, num_beams] (and `log_probs`
        [B, num_beams, max_new], `cum_log_probs` [B, num_beams] with `output_log_probs`). With
        `streaming`, an iterator yielding that after every step that generated tokens (not with beams;
        on ranks 1.. of a multi-rank engine it yields the final result only).

        The rules are the executor's (`inflight_batcher/README.md`): `end_id=None` stops on every eos id
        of the checkpoint, -1 on none; the end id is not part of the output, a stop word is; bad words
        and stop words are one list of token-id lists for the whole batch; sampling is greedy unless a
        knob asks otherwise (the defaults, top_k=1, are greedy); `random_seed` seeds prompt i with
        `random_seed + i`. `length_penalty`, `early_stopping`: beam search; `min_length`: the end id is
        held back until that many tokens."""
        prompts = [_ids(p) for p in batch_input_ids]
        self._check(prompts, max_new_tokens)
        if end_id is None:  # every eos id of the checkpoint ends a sequence (Llama-3 instruct lists two)
            eos = self.config.model.eos_token_id
            end_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        else:
            end_ids = [end_id]
        stop = [list(w) for w in stop_words_list or []]
        bad = [list(w) for w in bad_words_list or []]
        requests = [
            Request(
                p, max_new_tokens, end_id=end_ids[0] if end_ids else -1, pad_id=pad_id, end_ids=end_ids[1:],
                streaming=streaming, stop_words=stop, bad_words=bad, return_log_probs=output_log_probs,
                sampling=SamplingParams(
                    temperature=temperature, top_k=top_k, top_p=top_p, min_length=min_length,
                    repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                    frequency_penalty=frequency_penalty, length_penalty=length_penalty, beam_width=num_beams,
                    early_stopping=early_stopping, random_seed=None if random_seed is None else random_seed + i,
                ),
            )
            for i, p in enumerate(prompts)
        ]  # fmt: skip
        if pad_id is None:
            pad_id = end_ids[0] if end_ids else 0
        outputs = _Outputs(prompts, num_beams, max_new_tokens, pad_id, output_log_probs)
        as_dict = return_dict or output_sequence_lengths
        if streaming:
            return self._stream(requests, outputs, as_dict)
        for i, out in enumerate(self._run(requests)):
            outputs.add(i, out)
        return outputs.result(as_dict, copy=False)

    # -- running the executor ----------------------------------------------------------------------
    def _run(self, requests: list[Request]) -> list[Output]:
        """The final outputs of `requests`, on every rank."""
        if self.rank > 0:
            return self._follow()
        with self._leader() as (ex, box):
            box[0] = finals = ex.generate(requests)
            _raise_failed(finals)
        return finals

    def _stream(self, requests: list[Request], outputs: _Outputs, as_dict: bool) -> Iterator[torch.Tensor | dict]:
        if self.rank > 0:
            for i, out in enumerate(self._follow()):
                outputs.add(i, out)
            yield outputs.result(as_dict, copy=False)
            return
        steps: queue.SimpleQueue[list[tuple[int, Output]]] = queue.SimpleQueue()
        for i, r in enumerate(requests):
            r.client_id = _Tag(steps, i)
        latest: list[Output | None] = [None] * len(requests)
        with self._leader() as (ex, box):
            ids = ex.enqueue_batch(requests)
            left = len(requests)
            try:
                while left:
                    for i, out in steps.get():  # one step's outputs of this call
                        latest[i] = out
                        outputs.add(i, out)
                        left -= out.finished
                    _raise_failed([o for o in latest if o is not None and o.finished])
                    yield outputs.result(as_dict, copy=True)
            finally:
                if left:  # closed early, or a request failed: the rest of the call ends too
                    for rid in ids:
                        ex.cancel(rid)
            box[0] = [dataclasses.replace(o, client_id=None) for o in latest]

    @contextlib.contextmanager
    def _leader(self) -> Iterator[tuple[Executor, list]]:
        """Rank 0's executor for one call, and a box for the call's final outputs. One rank: the runner's
        own executor. Several: an executor made for the call on the runner's pool, shut down after it
        (which ends the followers' `run_follower`); then the box (or the error) goes to the other ranks."""
        if self.executor is not None:
            yield self.executor, [None]
            return
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this ModelRunner is generating already (a streaming generation not yet exhausted?)")
        box: list = [None]
        try:
            ex = Executor(self.engine, self.executor_config, _route, kv_cache=self.kv)
            try:
                yield ex, box
            finally:
                ex.shutdown()  # its live requests (a stream closed early) end cancelled; the loop has stopped
        except BaseException as e:
            self._busy.release()
            _broadcast(("error", e if isinstance(e, Exception) else RuntimeError("the leader's generation stopped")))
            raise
        self._busy.release()
        _broadcast(("ok", box[0]))

    # -- multi-rank engines ------------------------------------------------------------------------
    def _follow(self) -> list[Output]:
        """Ranks 1..: run the leader's steps until its executor stops, then take its result."""
        with self._busy:
            run_follower(self.engine, self.executor_config, self.kv)
        kind, value = _broadcast(None)
        if kind == "error":
            raise value
        return value


@dataclass(frozen=True)
class _Tag:
    """`client_id` of a streamed call's request: the call's queue of steps, and the request's index."""

    steps: queue.SimpleQueue
    index: int


def _route(outputs: list[Output]) -> None:
    """`on_outputs` of a runner's executor: every streamed call gets the outputs of its requests of one
    step in one piece (so it yields once per step, whatever other calls run beside it)."""
    calls: dict[int, tuple[queue.SimpleQueue, list[tuple[int, Output]]]] = {}
    for out in outputs:
        tag = out.client_id
        if isinstance(tag, _Tag):
            calls.setdefault(id(tag.steps), (tag.steps, []))[1].append((tag.index, out))
    for steps, outs in calls.values():
        steps.put(outs)


def _raise_failed(finals: list[Output]) -> None:
    for out in finals:
        if out.finish_reason == "error":
            raise RuntimeError(f"generation failed: {out.error}")


def _broadcast(obj: object) -> object:
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
