"""KV cache host offload (TensorRT-LLM's secondary pool): host copies of evicted reusable blocks.

The block manager decides what moves (`BlockManager.pending_moves`); `HostKVPool.apply` moves it, for all
blocks at once, on the device's current stream, before the step's forward (outside any CUDA graph):

    onboards  host slots --H2D--> device staging                    (1)
    offloads  device blocks --gather--> device staging --D2H--> host slots   (2)
    onboards  device staging --scatter--> device blocks             (3)

One gather and one scatter kernel per direction; the host side needs no work at all: the pool is block-major
and page-locked, so each run of consecutive slots is one asynchronous DMA copy (slots are handed out in order,
so runs are long). Stream order makes it safe for a move to land where another move of the same batch reads:
(1) reads the slots before (2) writes them, (2) reads the blocks before (3) writes them, and a later batch's
reads come after an earlier batch's writes. The host never waits for the device. Blocks are copied as raw
bytes: any cache dtype (fp16, bf16, int8, fp8) moves the same way. A CPU engine runs the same path on plain
tensors (the copies are then memcpys).
"""

from __future__ import annotations

import logging
import weakref

import torch

from tensorrt_llm._utils import index_tensor
from tensorrt_llm.runtime.kv_cache import KVCachePool

log = logging.getLogger(__name__)


def _raw(data: torch.Tensor) -> torch.Tensor:
    """The pool as bytes: [L, 2, blocks, tokens_per_block, Hkv, D * itemsize] uint8 (same memory)."""
    return data if data.dtype == torch.uint8 else data.view(torch.uint8)


def _runs(pairs: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int, int]]]:
    """`pairs` (host slot, device block) sorted by slot: the device blocks in that order, and the runs of
    consecutive slots as (first slot, first staging row, length)."""
    pairs = sorted(pairs)
    runs: list[tuple[int, int, int]] = []
    for i, (h, _) in enumerate(pairs):
        if runs and runs[-1][0] + runs[-1][2] == h:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((h, i, 1))
    return [b for _, b in pairs], runs


def _unpin(data: torch.Tensor, device: torch.device) -> None:
    torch.cuda.synchronize(device)  # no copy may still use the memory
    torch.cuda.cudart().cudaHostUnregister(data.data_ptr())


class HostKVPool:
    """`num_blocks` host slots of one device block each: data [num_blocks, L, 2, tpb, Hkv, D'] uint8."""

    def __init__(self, kv: KVCachePool, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the host KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        raw = _raw(kv.data)
        self.device = raw.device
        self.block_shape = (raw.shape[0], raw.shape[1], *raw.shape[3:])
        self.data = torch.empty((num_blocks, *self.block_shape), dtype=torch.uint8)
        self.pinned = False
        if self.device.type == "cuda":
            # Page-locked in place (cudaHostRegister, portable: whichever device is current here): torch's
            # pinned allocator would round the size up to a power of two and keep the memory after use.
            err = torch.cuda.cudart().cudaHostRegister(self.data.data_ptr(), self.data.nbytes, 1)
            if int(err) == 0:
                self.pinned = True
                weakref.finalize(self, _unpin, self.data, self.device).atexit = False
            else:  # correct still, but each copy then waits for the device
                log.warning("cannot page-lock the %d-byte host KV pool (error %s): copies will be synchronous",
                            self.data.nbytes, err)  # fmt: skip

    @property
    def bytes_per_block(self) -> int:
        return self.data[0].numel()

    @torch.inference_mode()
    def apply(self, kv: KVCachePool, offloads: list[tuple[int, int]], onboards: list[tuple[int, int]]) -> None:
        """Queue `offloads` ((device block, host slot) pairs) and `onboards` ((host slot, device block) pairs)
        on the current stream, in the order the module docstring gives."""
        raw = _raw(kv.data)
        if onboards:  # (1)
            dst, runs = _runs(onboards)
            staged = torch.empty((len(dst), *self.block_shape), dtype=torch.uint8, device=self.device)
            for h, i, n in runs:
                staged[i : i + n].copy_(self.data[h : h + n], non_blocking=True)
        if offloads:  # (2)
            src, runs = _runs([(h, b) for b, h in offloads])
            blocks = raw.index_select(2, index_tensor(src, self.device)).movedim(2, 0).contiguous()
            for h, i, n in runs:
                self.data[h : h + n].copy_(blocks[i : i + n], non_blocking=True)
        if onboards:  # (3)
            raw.index_copy_(2, index_tensor(dst, self.device), staged.movedim(0, 2))

    def synchronize(self) -> None:
        """Wait for every queued move (tests)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
