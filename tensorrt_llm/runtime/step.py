"""The input of one forward step: packed new tokens of any mix of sequences, and where their K/V live.

Sequence b contributes `seq_lens[b]` new tokens (its whole prompt or a chunk of it in the context
phase, one token in the generation phase); after the step it has `context_lens[b]` tokens cached.

    packed tokens  | seq 0: p0 p1 p2 p3 | seq 1: g | seq 2: g |     T = 6, B = 3
    seq_lens       |         4          |    1     |    1     |
    context_lens   |         4          |   17     |    9     |
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tensorrt_llm._utils import host_to_device


@dataclass
class StepInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, each token's rotary table row: its position (+ a LongRoPE offset)
    seq_lens: torch.Tensor  # [B] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64
    logits_indices: torch.Tensor  # [N] int64, rows of the packed tokens whose logits are returned
    max_seq_len: int
    max_context_len: int
    # How many of the last sequences have exactly one new token (a mixed step's generation rows): the
    # attention runs them with the decode kernel. 0: unknown, or none.
    num_decode_tail: int = 0

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]


SMALL_STEP_TOKENS = 16  # up to this many new tokens, plain Python lists beat numpy's per-call cost


def build_step_input(
    tokens: Sequence[Sequence[int]],
    num_cached: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    tokens_per_block: int,
    device: torch.device | str = "cpu",
    all_logits: bool = False,
    rope_offsets: Sequence[int] | None = None,
) -> StepInput:
    """Builds a StepInput from host lists: per sequence its new tokens, how many of its tokens are
    already in the cache, and its block table (long enough for cached + new tokens). Returns the logits
    of the last new token of each sequence, or of every new token with `all_logits`. `rope_offsets`: per
    sequence, what its tokens' positions (their rotary table rows) get added (`ModelConfig.rope_offset`)."""
    if not tokens or not all(len(t) for t in tokens):
        raise ValueError("a step needs at least one sequence, and every sequence at least one new token")
    # A small step (batch-1 decode, a few generation rows) costs ~4 us in lists against ~35 us in numpy,
    # whose ~40 calls cost ~1 us each whatever their size; a large one (a prompt, a big batch) the reverse.
    if sum(map(len, tokens)) <= SMALL_STEP_TOKENS:
        pack = _pack_lists
    else:
        pack = _pack_arrays
    offsets = rope_offsets if rope_offsets is not None and any(rope_offsets) else None
    host, width, n_logits, facts = pack(tokens, num_cached, block_tables, tokens_per_block, all_logits, offsets)
    # One host buffer, one copy to the device; the fields are views into it.
    dev = host_to_device(host, device)
    B = len(tokens)
    T = (host.shape[0] - n_logits - B * (2 + width)) // 3  # the buffer holds 3 T + N + 2 B + B * width
    o = (0, T, 2 * T, 3 * T, 3 * T + n_logits, 3 * T + n_logits + B, 3 * T + n_logits + 2 * B)
    return StepInput(
        input_ids=dev[o[0] : o[1]],
        positions=dev[o[1] : o[2]],
        slot_mapping=dev[o[2] : o[3]],
        logits_indices=dev[o[3] : o[4]],
        seq_lens=dev[o[4] : o[5]].to(torch.int32),
        context_lens=dev[o[5] : o[6]].to(torch.int32),
        block_tables=dev[o[6] :].view(B, width).to(torch.int32),
        **facts,
    )


def _short_table(table: Sequence[int], tokens: int) -> ValueError:
    return ValueError(f"block table of {len(table)} blocks too short for {tokens} tokens")


def _pack_lists(
    tokens: Sequence[Sequence[int]],
    num_cached: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    tpb: int,
    all_logits: bool,
    rope_offsets: Sequence[int] | None,
) -> tuple[torch.Tensor, int, int, dict[str, int]]:
    """`_pack_arrays` for a small step, in plain lists (the same buffer, the same errors)."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    logits_idx: list[int] = []
    seq_lens: list[int] = []
    ctx_lens: list[int] = []
    prefill = -1  # the last sequence with more than one new token
    for b, (toks, cached, table) in enumerate(zip(tokens, num_cached, block_tables, strict=True)):
        n = len(toks)
        if cached + n > len(table) * tpb:
            raise _short_table(table, cached + n)
        start = len(ids)
        ids += toks
        shift = rope_offsets[b] if rope_offsets is not None else 0
        for p in range(cached, cached + n):
            pos.append(p + shift)
            slots.append(table[p // tpb] * tpb + p % tpb)
        logits_idx += range(start, start + n) if all_logits else (start + n - 1,)
        seq_lens.append(n)
        ctx_lens.append(cached + n)
        if n > 1:
            prefill = b
    width = max(map(len, block_tables))
    flat = [b for t in block_tables for b in itertools.chain(t, itertools.repeat(0, width - len(t)))]
    host = torch.tensor(ids + pos + slots + logits_idx + seq_lens + ctx_lens + flat, dtype=torch.int64)
    facts = dict(max_seq_len=max(seq_lens), max_context_len=max(ctx_lens), num_decode_tail=len(tokens) - 1 - prefill)
    return host, width, len(logits_idx), facts


def _pack_arrays(
    tokens: Sequence[Sequence[int]],
    num_cached: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    tokens_per_block: int,
    all_logits: bool,
    rope_offsets: Sequence[int] | None,
) -> tuple[torch.Tensor, int, int, dict[str, int]]:
    """The step as one int64 buffer [ids T | positions T | slots T | logits rows N | seq lens B | context lens B
    | tables B * width], the tables' width, N, and StepInput's host-side facts (max lengths, decode tail)."""
    seq_lens = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    cached = np.asarray(num_cached, dtype=np.int64)
    ctx_lens = cached + seq_lens
    # The tables padded into one [B, width] array in one pass (a row assignment per sequence cost ~1 µs each).
    table_lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=len(block_tables))
    width = int(table_lens.max())
    table = np.zeros((len(block_tables), width), dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(block_tables), dtype=np.int64, count=int(table_lens.sum()))
    table[np.arange(width) < table_lens[:, None]] = flat  # row-major order: each table's entries in turn
    need = (ctx_lens + tokens_per_block - 1) // tokens_per_block
    short = np.flatnonzero(need > table_lens)
    if short.size:
        b = int(short[0])
        raise _short_table(block_tables[b], int(ctx_lens[b]))
    T = int(seq_lens.sum())
    seq_of_token = np.repeat(np.arange(len(seq_lens)), seq_lens)  # [T]
    starts = np.cumsum(seq_lens) - seq_lens  # first packed row of each sequence
    pos = np.arange(T) - starts[seq_of_token] + cached[seq_of_token]
    slots = table[seq_of_token, pos // tokens_per_block] * tokens_per_block + pos % tokens_per_block
    ids = np.fromiter(itertools.chain.from_iterable(tokens), dtype=np.int64, count=T)
    logits_idx = np.arange(T) if all_logits else starts + seq_lens - 1
    if rope_offsets is not None:  # after the slots: an offset picks a rotary table row, not a cache slot
        pos = pos + np.asarray(rope_offsets, dtype=np.int64)[seq_of_token]
    host = np.concatenate([ids, pos, slots, logits_idx, seq_lens, ctx_lens, table.ravel()])
    prefill = np.flatnonzero(seq_lens > 1)
    facts = dict(
        max_seq_len=int(seq_lens.max()),
        max_context_len=int(ctx_lens.max()),
        num_decode_tail=len(seq_lens) - 1 - int(prefill[-1]) if prefill.size else len(seq_lens),
    )
    return torch.from_numpy(host), width, logits_idx.size, facts
