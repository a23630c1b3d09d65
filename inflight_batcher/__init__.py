"""The in-flight batcher: requests, KV block manager, scheduler, sampler, the executor loop, and
`ModelRunner` (TensorRT-LLM's offline interface, over the executor).

    Request --enqueue--> Executor loop: Scheduler.schedule() -> Engine.forward() -> sampler -> callbacks
                                        (BlockManager: which KV blocks each sequence owns)

Never imports Triton; the backend (`backend/`) adapts Triton requests to `Request` and `Output`.
"""

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.config import ExecutorConfig
from inflight_batcher.executor import Executor, IterationStats, QueueFullError, make_kv_cache, run_follower
from inflight_batcher.request import Output, Request, RequestStatus, SamplingParams, parse_word_list
from inflight_batcher.runner import ModelRunner
from inflight_batcher.scheduler import Scheduler, SchedulerOutput

__all__ = [
    "BlockManager",
    "Executor",
    "ExecutorConfig",
    "IterationStats",
    "ModelRunner",
    "Output",
    "QueueFullError",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "Scheduler",
    "SchedulerOutput",
    "make_kv_cache",
    "parse_word_list",
    "run_follower",
]
