"""CUDA graphs of the generation step, one per batch-size bucket.

A generation step (every sequence adds one token) launches a few hundred small kernels; at small batch
their launch cost, not the GPU, sets the speed. Each bucket's step is captured once, with the shapes of
the bucket, and replayed after copying the step's inputs into the graph's static buffers:

    step of B sequences → bucket b ≥ B → rows B..b-1 padded: token 0, one cached token, their K/V
    written to the pool's scratch block (never given to a sequence) → replay → logits[:B]

Attention inside the graph is launched with `max_context_len = max_seq_len` of the engine, an upper
bound the kernels accept, so one graph serves every context length.
"""

import torch

from tensorrt_llm.runtime.kv_cache import KVCachePool
from tensorrt_llm.runtime.step import StepInput


def default_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_batch_size (the bucket waste stays under 8 rows)."""
    sizes = [b for b in (1, 2, 4) if b < max_batch_size] + list(range(8, max_batch_size, 8)) + [max_batch_size]
    return sorted(set(sizes))


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv: KVCachePool, max_batch_size: int, max_seq_len: int) -> None:
        self.model, self.kv = model, kv
        self.max_seq_len = max_seq_len
        self.buckets = default_buckets(max_batch_size)
        device = kv.data.device
        B, M = self.buckets[-1], -(-max_seq_len // kv.tokens_per_block)
        self.input_ids = torch.zeros(B, dtype=torch.int64, device=device)
        self.positions = torch.zeros(B, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(B, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(B, dtype=torch.int32, device=device)
        self.block_tables = torch.full((B, M), kv.scratch_block, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((B,), kv.scratch_block * kv.tokens_per_block, dtype=torch.int64, device=device)
        self.logits_indices = torch.arange(B, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture_all()

    def _step(self, b: int) -> StepInput:
        return StepInput(
            input_ids=self.input_ids[:b],
            positions=self.positions[:b],
            seq_lens=self.seq_lens[:b],
            context_lens=self.context_lens[:b],
            block_tables=self.block_tables[:b],
            slot_mapping=self.slot_mapping[:b],
            logits_indices=self.logits_indices[:b],
            max_seq_len=1,
            max_context_len=self.max_seq_len,
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # Largest first, so that smaller graphs reuse the memory pool the largest one reserved.
        for b in reversed(self.buckets):
            step = self._step(b)
            with torch.cuda.stream(stream):
                for _ in range(2):  # compiles the Triton kernels and settles the allocator
                    self.model(step, self.kv.k, self.kv.v)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self.model(step, self.kv.k, self.kv.v)
            self.graphs[b] = graph
        torch.cuda.synchronize()

    def can_run(self, step: StepInput) -> bool:
        B = step.seq_lens.shape[0]
        return step.max_seq_len == 1 and step.num_tokens == B and B <= self.buckets[-1]

    @torch.inference_mode()
    def run(self, step: StepInput) -> torch.Tensor:
        B = step.num_tokens
        b = next(x for x in self.buckets if x >= B)
        width = step.block_tables.shape[1]
        self.input_ids[:B].copy_(step.input_ids)
        self.positions[:B].copy_(step.positions)
        self.context_lens[:B].copy_(step.context_lens)
        self.slot_mapping[:B].copy_(step.slot_mapping)
        self.block_tables[:B, :width].copy_(step.block_tables)
        # Rows past B keep (or get back) the scratch values, so padded rows never touch live blocks.
        self.context_lens[B:b].fill_(1)
        self.slot_mapping[B:b].fill_(self.kv.scratch_block * self.kv.tokens_per_block)
        self.block_tables[B:b].fill_(self.kv.scratch_block)
        self.graphs[b].replay()
        return self.outputs[b][:B]
