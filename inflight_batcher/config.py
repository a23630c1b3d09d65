"""Executor configuration (the backend fills it from the model's config.pbtxt parameters)."""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("guaranteed_no_evict", "max_utilization")


@dataclass(frozen=True)
class ExecutorConfig:
    """Limits and policies of one executor. `None` means "take the engine's build value"."""

    max_batch_size: int | None = None
    """Most sequences (beams count one each) held in the running batch."""
    max_num_tokens: int | None = None
    """Most tokens (context + generation) computed in one step."""
    batch_scheduler_policy: str = "guaranteed_no_evict"
    """`guaranteed_no_evict`: admit only when KV blocks for the whole possible length can be reserved.
    `max_utilization`: admit while blocks are free; pause the newest requests when they run out."""
    kv_cache_free_gpu_mem_fraction: float = 0.9
    """Share of GPU memory free after the weights that the KV cache takes."""
    max_tokens_in_paged_kv_cache: int | None = None
    """Cap on the KV cache size in tokens (the smaller of this and the fraction wins)."""
    max_beam_width: int = 1
    """Largest beam width accepted (also capped by the engine's build value)."""
    enable_chunked_context: bool = False
    """Split prompts longer than the step's token budget over several steps."""
    enable_kv_cache_reuse: bool = False
    """Prefix reuse: full KV blocks stay cached after their requests end, and a request whose tokens start
    with a cached chain of blocks takes them instead of computing them again."""
    kv_cache_host_memory_bytes: int = 0
    """Host offload (with `enable_kv_cache_reuse`): a host pool of this many bytes (pinned on CUDA; whole
    blocks, `Engine.kv_bytes_per_block` each) where cached blocks evicted from the device pool go instead of
    being dropped, and from where a later request's prefix is copied back. 0: none."""
    max_queue_size: int | None = None
    """Most requests waiting for admission; more are refused at once (QueueFullError)."""
    cuda_graphs: bool = True
    """Replay CUDA graphs for generation steps and single-prompt steps (CUDA only; `cuda_graph_mode`)."""

    overlap_scheduling: bool = True
    """Schedule and launch step n+1 while step n runs on the device (its tokens are read afterwards).
    Requests with penalties, multi-token bad words or beams make a step wait for its tokens."""

    def __post_init__(self) -> None:
        if self.batch_scheduler_policy not in POLICIES:
            raise ValueError(f"batch_scheduler_policy={self.batch_scheduler_policy!r}: must be one of {POLICIES}")
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            raise ValueError(f"kv_cache_free_gpu_mem_fraction={self.kv_cache_free_gpu_mem_fraction}: must be in (0, 1]")
        for name in ("max_batch_size", "max_num_tokens", "max_tokens_in_paged_kv_cache", "max_queue_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r}: must be a positive integer or None")
        v = self.kv_cache_host_memory_bytes
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"kv_cache_host_memory_bytes={v!r}: must be an integer >= 0")
        if isinstance(self.max_beam_width, bool) or not isinstance(self.max_beam_width, int):
            raise ValueError(f"max_beam_width={self.max_beam_width!r}: must be an integer")
        if self.max_beam_width < 1:
            raise ValueError(f"max_beam_width={self.max_beam_width}: must be >= 1")
