"""CUDA graphs of the forward step, captured once per shape bucket and replayed.

A step launches a few hundred small kernels; at small batch their launch cost, not the GPU, sets the
speed. Two kinds of step are captured:

- generation steps (every sequence adds one token), per batch-size bucket b:
      B sequences → bucket b ≥ B; rows B..b-1 padded (token 0, one cached token, K/V to the scratch block)
- single-sequence context steps (a prompt, or a chunk of one), per token bucket t:
      T new tokens → bucket t ≥ T; tokens T..t-1 padded: their K/V go to the scratch block and their
      attention rows are thrown away (causal attention keeps real rows blind to them)

Graphs end at the final hidden states; the vocabulary head runs after the replay. The pool's scratch
block is never given to a sequence, so padding never touches live cache. Attention
inside a graph is launched with `max_context_len` = the engine's max_seq_len, an upper bound the
kernels accept, so one graph serves every context length.
"""

import torch

from tensorrt_llm.models.base import CausalLM
from tensorrt_llm.runtime.kv_cache import KVCachePool
from tensorrt_llm.runtime.step import StepInput


def default_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, then every 8 to 64, every 32 to 256, every 64 beyond: padding stays under ~1/8 of a
    step, while large batches (compute-bound anyway) need few graphs."""
    sizes = [1, 2, 4, *range(8, 65, 8), *range(96, 257, 32), *range(320, max_batch_size, 64)]
    return sorted({b for b in sizes if b < max_batch_size} | {max_batch_size})


PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)


class _Captured:
    """One graph and the static step it reads (tensors filled before each replay)."""

    def __init__(self, step: StepInput, graph: torch.cuda.CUDAGraph, hidden: torch.Tensor) -> None:
        self.step, self.graph, self.hidden = step, graph, hidden


class StepGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv: KVCachePool,
        max_batch_size: int,
        max_seq_len: int,
        max_num_tokens: int,
    ) -> None:
        self.model, self.kv = model, kv
        self.max_seq_len = max_seq_len
        self.max_blocks = -(-max_seq_len // kv.tokens_per_block)
        self.scratch_slot = kv.scratch_block * kv.tokens_per_block
        self.decode_buckets = default_buckets(max_batch_size)
        self.prefill_buckets = [t for t in PREFILL_BUCKETS if t <= min(max_num_tokens, max_seq_len)]
        self.decode: dict[int, _Captured] = {}
        self.prefill: dict[int, _Captured] = {}
        pool = torch.cuda.graph_pool_handle()
        # Largest first, so that smaller graphs reuse the memory the largest one reserved in the pool.
        for b in reversed(self.decode_buckets):
            self.decode[b] = self._capture(self._static_step(b, b), pool)
        for t in reversed(self.prefill_buckets):
            self.prefill[t] = self._capture(self._static_step(1, t), pool)
        torch.cuda.synchronize()

    def _static_step(self, B: int, T: int) -> StepInput:
        dev = self.kv.data.device
        return StepInput(
            input_ids=torch.zeros(T, dtype=torch.int64, device=dev),
            positions=torch.zeros(T, dtype=torch.int64, device=dev),
            seq_lens=torch.full((B,), T // B, dtype=torch.int32, device=dev),
            context_lens=torch.full((B,), T // B, dtype=torch.int32, device=dev),
            block_tables=torch.full((B, self.max_blocks), self.kv.scratch_block, dtype=torch.int32, device=dev),
            slot_mapping=torch.full((T,), self.scratch_slot, dtype=torch.int64, device=dev),
            logits_indices=torch.arange(B, dtype=torch.int64, device=dev) * (T // B) + (T // B - 1),
            max_seq_len=T // B,
            max_context_len=self.max_seq_len,
        )

    @torch.inference_mode()
    def _capture(self, step: StepInput, pool) -> _Captured:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles the Triton kernels and settles the allocator
                self.model.hidden(step, self.kv.k, self.kv.v)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = self.model.hidden(step, self.kv.k, self.kv.v)
        return _Captured(step, graph, hidden)

    def run(self, step: StepInput) -> torch.Tensor | None:
        """Replays the graph of `step`'s bucket; None when no graph fits (the caller runs eagerly)."""
        B, T = step.seq_lens.shape[0], step.num_tokens
        if step.logits_indices.shape[0] != B:
            return None
        if step.max_seq_len == 1 and T == B and B <= self.decode_buckets[-1]:
            g = self.decode[next(b for b in self.decode_buckets if b >= B)]
            pad = g.step.seq_lens.shape[0]
            self._fill(g.step, step, B, pad)
            g.step.context_lens[B:pad].fill_(1)
        elif B == 1 and self.prefill_buckets and T <= self.prefill_buckets[-1]:
            g = self.prefill[next(t for t in self.prefill_buckets if t >= T)]
            pad = g.step.num_tokens
            self._fill(g.step, step, T, pad)
            g.step.context_lens.copy_(step.context_lens + (pad - T))
            g.step.logits_indices.fill_(T - 1)
        else:
            return None
        g.graph.replay()
        # Logits outside the graph: one [B, vocab] buffer per graph would cost GBs over the buckets.
        return self.model.logits(g.hidden[:B])

    def _fill(self, dst: StepInput, src: StepInput, n: int, pad: int) -> None:
        """Copies the n real tokens / rows of `src` into the static step and resets the padding."""
        B = src.seq_lens.shape[0]
        width = src.block_tables.shape[1]
        dst.input_ids[:n].copy_(src.input_ids)
        dst.positions[:n].copy_(src.positions)
        dst.slot_mapping[:n].copy_(src.slot_mapping)
        dst.context_lens[:B].copy_(src.context_lens)
        dst.block_tables[:B, :width].copy_(src.block_tables)
        dst.block_tables[:B, width:].fill_(self.kv.scratch_block)
        if n < pad:
            dst.input_ids[n:pad].zero_()
            dst.positions[n:pad].zero_()
            dst.slot_mapping[n:pad].fill_(self.scratch_slot)
            dst.block_tables[B:].fill_(self.kv.scratch_block)
