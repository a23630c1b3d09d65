"""The in-flight batcher: requests, KV block manager, scheduler, sampler and the executor loop.

    Request --enqueue--> Executor loop: Scheduler.schedule() -> Engine.forward() -> sampler -> callbacks
                                        (BlockManager: which KV blocks each sequence owns)

Never imports Triton; the backend (`backend/`) adapts Triton requests to `Request` and `Output`.
"""

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.config import ExecutorConfig
from inflight_batcher.executor import Executor, IterationStats, QueueFullError, run_follower
from inflight_batcher.request import Output, Request, RequestStatus, SamplingParams, parse_word_list
from inflight_batcher.scheduler import Scheduler, SchedulerOutput

__all__ = [
    "BlockManager",
    "Executor",
    "ExecutorConfig",
    "IterationStats",
    "Output",
    "QueueFullError",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "Scheduler",
    "SchedulerOutput",
    "parse_word_list",
    "run_follower",
]
