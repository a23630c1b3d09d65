"""The input of one forward step: packed new tokens of any mix of sequences, and where their K/V live.

Sequence b contributes `seq_lens[b]` new tokens (its whole prompt or a chunk of it in the context
phase, one token in the generation phase); after the step it has `context_lens[b]` tokens cached.

    packed tokens  | seq 0: p0 p1 p2 p3 | seq 1: g | seq 2: g |     T = 6, B = 3
    seq_lens       |         4          |    1     |    1     |
    context_lens   |         4          |   17     |    9     |
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class StepInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    seq_lens: torch.Tensor  # [B] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64
    logits_indices: torch.Tensor  # [N] int64, rows of the packed tokens whose logits are returned
    max_seq_len: int
    max_context_len: int

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]


def build_step_input(
    tokens: Sequence[Sequence[int]],
    num_cached: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    tokens_per_block: int,
    device: torch.device | str = "cpu",
    all_logits: bool = False,
) -> StepInput:
    """Builds a StepInput from host lists: per sequence its new tokens, how many of its tokens are
    already in the cache, and its block table (long enough for cached + new tokens). Returns the logits
    of the last new token of each sequence, or of every new token with `all_logits`."""
    ids, pos, slots, last = [], [], [], []
    seq_lens, ctx_lens = [], []
    for toks, cached, table in zip(tokens, num_cached, block_tables, strict=True):
        n = len(toks)
        if n == 0:
            raise ValueError("every sequence of a step needs at least one new token")
        if (cached + n + tokens_per_block - 1) // tokens_per_block > len(table):
            raise ValueError(f"block table of {len(table)} blocks too short for {cached + n} tokens")
        ids.extend(toks)
        for p in range(cached, cached + n):
            pos.append(p)
            slots.append(table[p // tokens_per_block] * tokens_per_block + p % tokens_per_block)
        seq_lens.append(n)
        ctx_lens.append(cached + n)
        last.append(len(ids) - 1)
    width = max(len(t) for t in block_tables)
    table = torch.zeros(len(block_tables), width, dtype=torch.int32)
    for b, t in enumerate(block_tables):
        table[b, : len(t)] = torch.tensor(t, dtype=torch.int32)

    def dev(x: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype).to(device, non_blocking=True)

    return StepInput(
        input_ids=dev(ids, torch.int64),
        positions=dev(pos, torch.int64),
        seq_lens=dev(seq_lens, torch.int32),
        context_lens=dev(ctx_lens, torch.int32),
        block_tables=table.to(device, non_blocking=True),
        slot_mapping=dev(slots, torch.int64),
        logits_indices=torch.arange(len(ids), device=device) if all_logits else dev(last, torch.int64),
        max_seq_len=max(seq_lens),
        max_context_len=max(ctx_lens),
    )
