"""Paged KV cache bookkeeping: which block belongs to whom. Pure Python, no torch.

The KV pool (`tensorrt_llm.runtime.kv_cache.KVCachePool`) holds `num_blocks` blocks of
`tokens_per_block` token rows. A sequence owns a *block table*: the ids of its blocks in order, so the
token at position p lives in block `table[p // tokens_per_block]`, row `p % tokens_per_block`:

    positions  0 1 2 3 | 4 5 6 7 | 8 9 . .      (tokens_per_block = 4)
    table      [   17  ,    3    ,   42   ]     -> len(table) == ceil(num_tokens / tokens_per_block)

Blocks are reference counted so that beams can share the blocks of their common prefix (`fork`).
Invariant (checked by `check`): a block is in the free queue exactly when its ref count is 0, and
free + used == num_blocks.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable


class NoFreeBlocksError(RuntimeError):
    """Raised by `allocate` when the pool is exhausted; the scheduler checks first, so it is a bug."""


def blocks_for(num_tokens: int, tokens_per_block: int) -> int:
    """Blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // tokens_per_block)


class BlockManager:
    """Free queue + reference counts over `num_blocks` fixed-size blocks."""

    def __init__(self, num_blocks: int, tokens_per_block: int) -> None:
        if num_blocks < 1 or tokens_per_block < 1:
            raise ValueError(f"num_blocks={num_blocks} and tokens_per_block={tokens_per_block} must be >= 1")
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.ref_counts = [0] * num_blocks
        # FIFO: freed blocks go to the back, so a just-freed block is reused last (helps debugging:
        # stale reads of a freed block show old data rather than a neighbour's new data).
        self.free_queue: deque[int] = deque(range(num_blocks))

    # -- queries --
    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.tokens_per_block)

    def blocks_to_extend(self, table: list[int], num_tokens: int) -> int:
        """New blocks `table` needs to hold `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(table))

    # -- changes --
    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_queue):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self.free_queue)} free")
        out = [self.free_queue.popleft() for _ in range(n)]
        for b in out:
            self.ref_counts[b] = 1
        return out

    def extend(self, table: list[int], num_tokens: int) -> list[int]:
        """Append blocks to `table` (in place) so it holds `num_tokens` tokens; returns the new ones."""
        new = self.allocate(self.blocks_to_extend(table, num_tokens))
        table.extend(new)
        return new

    def fork(self, table: list[int]) -> list[int]:
        """A new table sharing every block of `table` (ref counts + 1)."""
        for b in table:
            assert self.ref_counts[b] > 0, f"fork of free block {b}"
            self.ref_counts[b] += 1
        return list(table)

    def free(self, table: list[int]) -> None:
        """Drop one reference to each block of `table` and empty it; blocks at 0 return to the queue."""
        for b in table:
            assert self.ref_counts[b] > 0, f"double free of block {b}"
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_queue.append(b)
        table.clear()

    # -- integrity --
    def check(self, tables: Iterable[list[int]] | None = None) -> None:
        """Assert the invariants; with `tables` (every live table), also that ref counts match them."""
        free = set(self.free_queue)
        assert len(free) == len(self.free_queue), "a block is twice in the free queue"
        for b, rc in enumerate(self.ref_counts):
            assert rc >= 0, f"block {b} has ref count {rc}"
            assert (rc == 0) == (b in free), f"block {b}: ref count {rc}, in free queue: {b in free}"
        if tables is not None:
            seen = Counter(b for t in tables for b in t)
            for b, rc in enumerate(self.ref_counts):
                assert seen.get(b, 0) == rc, f"block {b}: ref count {rc} but {seen.get(b, 0)} tables hold it"
