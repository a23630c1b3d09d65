"""Paged KV cache bookkeeping: which block belongs to whom. Pure Python, no torch.

The KV pool (`tensorrt_llm.runtime.kv_cache.KVCachePool`) holds `num_blocks` blocks of
`tokens_per_block` token rows. A sequence owns a *block table*: the ids of its blocks in order, so the
token at position p lives in block `table[p // tokens_per_block]`, row `p % tokens_per_block`:

    positions  0 1 2 3 | 4 5 6 7 | 8 9 . .      (tokens_per_block = 4)
    table      [   17  ,    3    ,   42   ]     -> len(table) == ceil(num_tokens / tokens_per_block)

Blocks are reference counted so that beams can share the blocks of their common prefix (`fork`).

Prefix reuse (`enable_reuse`): a full block whose KV is computed gets a key, the hash of its tokens and of
the key of the block before it (a chain: equal keys mean equal tokens from position 0 on, so equal KV).
When its last holder frees it, a keyed block is not wiped but kept *cached*: still findable by its key,
and taken back (evicted, least recently freed first) only when no blank block is left. A new request
takes the longest chain of its prompt's keys found (`match`) and computes only the rest.

Host offload (`host_blocks` > 0, TensorRT-LLM's secondary pool): an evicted cached block is not dropped but
moved, key and all, to a host slot (a blank one, else the least recently offloaded one, whose key is then
dropped for good); `lookup` follows a chain through host-resident blocks too, and `take` onboards them into
free device blocks. The block manager only decides: the data moves are queued (`pending_moves`) and the
executor performs them, batched, before the next forward (or beam block copy). Host slots appear in what
`lookup` returns as ids above `released` (`host_base + slot`, ref count 0), never in a block table.

Invariants (checked by `check`): a block is free (blank or cached) exactly when its ref count is 0, and
blank + cached + used == num_blocks; a host slot is blank or holds exactly one key, and
host blank + host cached == host_blocks; a key lives in one place (device block or host slot).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence


class NoFreeBlocksError(RuntimeError):
    """Raised by `allocate` when the pool is exhausted; the scheduler checks first, so it is a bug."""


def blocks_for(num_tokens: int, tokens_per_block: int) -> int:
    """Blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // tokens_per_block)


class BlockManager:
    """Free queue + reference counts over `num_blocks` fixed-size blocks."""

    def __init__(
        self, num_blocks: int, tokens_per_block: int, enable_reuse: bool = False, host_blocks: int = 0
    ) -> None:
        if num_blocks < 1 or tokens_per_block < 1:
            raise ValueError(f"num_blocks={num_blocks} and tokens_per_block={tokens_per_block} must be >= 1")
        if host_blocks < 0:
            raise ValueError(f"host_blocks={host_blocks} must be >= 0")
        host_blocks = host_blocks if enable_reuse else 0  # only keyed (reusable) blocks are ever offloaded
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.enable_reuse = enable_reuse
        # A block-table entry whose block was handed back (sliding window: no query to come reads its keys):
        # the pool's scratch block (KVCachePool: index num_blocks), so the step reads it as it is, masked.
        self.released = num_blocks
        # Ids past `released` name host slots (in what `lookup` returns): their ref count is always 0.
        self.ref_counts = [0] * (num_blocks + 1 + host_blocks)
        # FIFO: freed blocks go to the back, so a just-freed block is reused last (helps debugging:
        # stale reads of a freed block show old data rather than a neighbour's new data).
        self.free_queue: deque[int] = deque(range(num_blocks))  # blank free blocks
        self.cached: OrderedDict[int, None] = OrderedDict()  # free keyed blocks, least recently freed first
        self.key_of: list[int | None] = [None] * num_blocks
        self.block_of: dict[int, int] = {}  # key -> the block holding it
        # What a key was made of (the previous key, the block's tokens): `lookup` compares it, so a hash
        # collision can never hand a request another prompt's KV.
        self.made_of: dict[int, tuple[int | None, tuple[int, ...]]] = {}
        self.reused_blocks = 0  # blocks found by `match` and taken, since start
        self.evicted_blocks = 0  # cached blocks an allocation took (their keys dropped or offloaded), since start
        self.reused_tokens = 0
        self.matched_requests = 0
        # Host offload: slots 0..host_blocks-1, named `host_base + slot` where a device id could be.
        self.host_blocks = host_blocks
        self.host_base = num_blocks + 1
        self.host_free: deque[int] = deque(range(self.host_blocks))  # blank slots
        self.host_cached: OrderedDict[int, None] = OrderedDict()  # slots holding a key, least recently offloaded first
        self.host_key_of: list[int | None] = [None] * self.host_blocks
        self.host_of: dict[int, int] = {}  # key -> the host slot holding it
        # Moves not yet performed (`pending_moves`): offloads as host slot -> device block (a slot written
        # twice keeps the last: the first block's key was dropped), onboards as (host slot, device block).
        self._offloads: dict[int, int] = {}
        self._onboards: list[tuple[int, int]] = []
        self.offloaded_blocks = 0  # since start
        self.onboarded_blocks = 0
        self.host_dropped_blocks = 0  # evicted from the host pool (their KV is gone)

    # -- queries --
    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: blank ones, then cached ones (evicted)."""
        return len(self.free_queue) + len(self.cached)

    @property
    def num_cached(self) -> int:
        return len(self.cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_host_cached(self) -> int:
        """Host slots holding an offloaded block."""
        return len(self.host_cached)

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.tokens_per_block)

    def blocks_to_extend(self, table: list[int], num_tokens: int) -> int:
        """New blocks `table` needs to hold `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(table))

    # -- changes --
    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise NoFreeBlocksError(f"asked for {n} blocks, {self.num_free} free")
        out = []
        for _ in range(n):
            if self.free_queue:
                b = self.free_queue.popleft()
            else:  # evict the least recently freed cached block: offloaded to the host, or dropped
                b, _ = self.cached.popitem(last=False)
                self.evicted_blocks += 1
                k = self.key_of[b]
                del self.block_of[k]
                self.key_of[b] = None
                if not self._offload(b, k):
                    del self.made_of[k]
            self.ref_counts[b] = 1
            out.append(b)
        return out

    def _offload(self, b: int, k: int) -> bool:
        """Move key `k`, evicted from device block `b`, to a host slot (the copy is queued); False when
        there is no host pool (or no slot to spare)."""
        if self.host_free:
            h = self.host_free.popleft()
        elif self.host_cached:  # the least recently offloaded block leaves the host pool for good
            h, _ = self.host_cached.popitem(last=False)
            old = self.host_key_of[h]
            del self.host_of[old], self.made_of[old]
            self.host_dropped_blocks += 1
        else:
            return False
        self.host_key_of[h] = k
        self.host_of[k] = h
        self.host_cached[h] = None
        self._offloads[h] = b
        self.offloaded_blocks += 1
        return True

    def _drop_host(self, k: int) -> None:
        """Forget the host copy of key `k` (its slot becomes blank; a queued copy into it is cancelled)."""
        h = self.host_of.pop(k)
        del self.host_cached[h]
        self.host_key_of[h] = None
        self._offloads.pop(h, None)
        self.host_free.append(h)

    def pending_moves(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The queued moves, handed over once: (offloads as (device block, host slot), onboards as
        (host slot, device block)). Perform them before anything else writes a device block: every source
        is read before any destination is written (an onboard may land in a block being offloaded, an
        offload in a slot being onboarded), and the host writes land before the next moves read the host."""
        offloads = [(b, h) for h, b in self._offloads.items()]
        onboards, self._offloads, self._onboards = self._onboards, {}, []
        return offloads, onboards

    def extend(self, table: list[int], num_tokens: int) -> list[int]:
        """Append blocks to `table` (in place) so it holds `num_tokens` tokens; returns the new ones."""
        new = self.allocate(self.blocks_to_extend(table, num_tokens))
        table.extend(new)
        return new

    def fork(self, table: list[int]) -> list[int]:
        """A new table sharing every block of `table` (ref counts + 1)."""
        for b in table:
            if b != self.released:
                assert self.ref_counts[b] > 0, f"fork of free block {b}"
                self.ref_counts[b] += 1
        return list(table)

    def _unref(self, b: int) -> None:
        assert self.ref_counts[b] > 0, f"double free of block {b}"
        self.ref_counts[b] -= 1
        if self.ref_counts[b] == 0:
            if self.key_of[b] is not None:
                self.cached[b] = None
            else:
                self.free_queue.append(b)

    def free(self, table: list[int]) -> None:
        """Drop one reference to each block of `table` and empty it; blocks at 0 become free (cached when
        keyed, the table's last blocks first in eviction order: a prefix outlives its continuations)."""
        for b in reversed(table):
            if b != self.released:
                self._unref(b)
        table.clear()

    def release(self, table: list[int], upto: int) -> None:
        """Hand back the blocks `table[:upto]` (sliding window: no query to come reads them), leaving
        `released` in their place."""
        for i in range(min(upto, len(table))):
            if table[i] != self.released:
                self._unref(table[i])
                table[i] = self.released

    # -- prefix reuse --
    def keys(self, tokens: Sequence[int], start: int = 0, prev: int | None = None) -> list[int]:
        """Chain keys of the full blocks of `tokens` from block `start` on (`prev`: the key of block
        `start - 1`). The chain starts from the token ids alone: anything else that changes the KV (LoRA,
        prompt tables) must enter `prev` when it exists."""
        tpb, out = self.tokens_per_block, []
        for i in range(start, len(tokens) // tpb):
            prev = hash((prev, tuple(tokens[i * tpb : (i + 1) * tpb])))
            out.append(prev)
        return out

    def lookup(self, tokens: Sequence[int], keys: list[int], prev: int | None = None) -> list[int]:
        """The blocks holding the longest found prefix of `keys`, the chain keys of `tokens`' full blocks
        from `prev` (what `keys` was given; nothing is taken); host-resident ones as `host_base + slot`."""
        tpb, out = self.tokens_per_block, []
        for i, k in enumerate(keys):
            b = self.block_of.get(k)
            if b is None:
                h = self.host_of.get(k)
                # (A slot whose offload copy is still queued cannot be read yet: the chain ends there.)
                if h is None or h in self._offloads:
                    break
                b = self.host_base + h
            if self.made_of[k] != (prev, tuple(tokens[i * tpb : (i + 1) * tpb])):
                break
            out.append(b)
            prev = k
        return out

    def take(self, blocks: list[int], tokens: int) -> list[int]:
        """Hold `blocks` (found by `lookup`) for a new table; cached ones stop being evictable. Host-resident
        ones are onboarded: each takes a free device block (queued copy), which holds its key from now on."""
        host = [b - self.host_base for b in blocks if b >= self.host_base]
        out = list(blocks)
        for b in blocks:
            if b < self.host_base:
                if self.ref_counts[b] == 0:
                    del self.cached[b]
                self.ref_counts[b] += 1
        for h in host:  # first all out of the host LRU: an offload below must not evict one of them
            del self.host_cached[h]
        for i, b in enumerate(blocks):
            if b >= self.host_base:
                h = b - self.host_base
                (d,) = self.allocate(1)  # may evict (offload) a cached block: never one of `blocks`, held above
                k = self.host_key_of[h]
                self.host_key_of[h] = None
                del self.host_of[k]
                self.host_free.append(h)
                self.key_of[d] = k
                self.block_of[k] = d
                self._onboards.append((h, d))
                self.onboarded_blocks += 1
                out[i] = d
        if blocks:
            self.reused_blocks += len(blocks)
            self.reused_tokens += tokens
            self.matched_requests += 1
        return out

    def publish(self, table: list[int], tokens: Sequence[int], keys: list[int], start: int, prev: int | None) -> None:
        """Blocks `table[start:start + len(keys)]` hold the computed KV of `tokens`' blocks `start..`, whose
        chain keys are `keys` (`prev`: the key of block `start - 1`): make them findable. A key already
        held by another block stays with that one; a host-resident copy is dropped (the device one serves)."""
        tpb = self.tokens_per_block
        for i, k in enumerate(keys, start):
            b = table[i]
            if b != self.released and self.key_of[b] is None and k not in self.block_of:
                if k in self.host_of:
                    self._drop_host(k)
                self.key_of[b] = k
                self.block_of[k] = b
                self.made_of[k] = (prev, tuple(tokens[i * tpb : (i + 1) * tpb]))
            prev = k

    # -- integrity --
    def check(self, tables: Iterable[list[int]] | None = None) -> None:
        """Assert the invariants; with `tables` (every live table), also that ref counts match them."""
        blank = set(self.free_queue)
        assert len(blank) == len(self.free_queue), "a block is twice in the free queue"
        assert not blank & self.cached.keys(), "a block is both blank and cached"
        free = blank | self.cached.keys()
        assert not any(self.ref_counts[self.num_blocks :]), "a host slot (or the scratch block) is referenced"
        for b, rc in enumerate(self.ref_counts[: self.num_blocks]):
            assert rc >= 0, f"block {b} has ref count {rc}"
            assert (rc == 0) == (b in free), f"block {b}: ref count {rc}, free: {b in free}"
            k = self.key_of[b]
            assert k is None or self.block_of.get(k) == b, f"block {b}: key not indexed"
            assert b not in self.cached or k is not None, f"cached block {b} has no key"
        assert len(self.block_of) == sum(k is not None for k in self.key_of), "key index out of step"
        host_blank = set(self.host_free)
        assert len(host_blank) == len(self.host_free), "a host slot is twice in the free queue"
        assert not host_blank & self.host_cached.keys(), "a host slot is both blank and cached"
        assert len(host_blank) + len(self.host_cached) == self.host_blocks, "a host slot is lost"
        for h, k in enumerate(self.host_key_of):
            in_lru = h in self.host_cached
            assert (k is not None) == in_lru, f"host slot {h}: key {k}, in the host LRU: {in_lru}"
            assert k is None or self.host_of.get(k) == h, f"host slot {h}: key not indexed"
        assert len(self.host_of) == len(self.host_cached), "host key index out of step"
        assert not self.host_of.keys() & self.block_of.keys(), "a key is both on the device and on the host"
        assert self.made_of.keys() == self.block_of.keys() | self.host_of.keys(), "key contents out of step"
        if tables is not None:
            seen = Counter(b for t in tables for b in t if b != self.released)
            for b, rc in enumerate(self.ref_counts[: self.num_blocks]):
                assert seen.get(b, 0) == rc, f"block {b}: ref count {rc} but {seen.get(b, 0)} tables hold it"
