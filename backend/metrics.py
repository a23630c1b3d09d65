"""The `nv_trt_llm_*` metric families (spec section 9), as the engine process reports them.

The engine process knows the values (`Executor.stats()`); the native backend owns the Triton metric objects
(`TRITONSERVER_Metric*`, backend/native). This module declares the families (sent once, in READY) and
turns a stats snapshot into METRICS lines (backend/wire.py) every `stats_check_period_ms`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inflight_batcher import IterationStats

TOKEN_LEN_BUCKETS = [10.0, 50.0, 100.0, 500.0, 1000.0]

# (family, kind, help, label key, label values); kind g: gauge, c: counter, h: histogram.
FAMILIES = [
    (
        "nv_trt_llm_request_metrics",
        "g",
        "TRT LLM request metrics",
        "request_type",
        ["active", "max", "scheduled", "context", "waiting"],
    ),
    ("nv_trt_llm_runtime_memory_metrics", "g", "TRT LLM runtime memory metrics", "memory_type", ["cpu", "gpu"]),
    (
        "nv_trt_llm_kv_cache_block_metrics",
        "g",
        "TRT LLM KV cache block metrics",
        "kv_cache_block_type",
        ["max", "free", "used", "tokens_per", "reused", "fraction", "host", "offloaded", "onboarded"],
    ),
    (
        "nv_trt_llm_inflight_batcher_metrics",
        "g",
        "TRT LLM inflight_batcher-specific metrics",
        "inflight_batcher_specific_metric",
        ["total_context_tokens", "generation_requests", "paused_requests"],
    ),
    ("nv_trt_llm_general_metrics", "g", "General TRT LLM metrics", "general_type", ["timestamp", "iteration_counter"]),
    (
        "nv_trt_llm_request_outcome_metrics",
        "c",
        "Requests ended, by outcome (completed, cancelled, failed, rejected at arrival), preemptions, and steps "
        "that failed (then run one request at a time)",
        "outcome",
        ["completed", "cancelled", "failed", "rejected", "preemptions", "failed_steps"],
    ),
    ("nv_llm_input_token_len", "h", "TRT LLM response input token length", "response_metric_type", []),
    ("nv_llm_output_token_len", "h", "TRT LLM response output token length", "response_metric_type", []),
]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def family_lines() -> str:
    """READY lines declaring every family: `family=name|kind|help` (histograms also give their buckets)."""
    lines = []
    for name, kind, help_, _, _ in FAMILIES:
        extra = "|" + ",".join(str(b) for b in TOKEN_LEN_BUCKETS) if kind == "h" else ""
        lines.append(f"family={name}|{kind}|{help_}{extra}")
    return "\n".join(lines)


class EngineMetrics:
    """Collects histogram observations between updates; `lines(stats)` renders one METRICS payload.
    A value of None leaves its series out (e.g. GPU memory on a CPU engine): no constant 0 posing as a
    measurement."""

    def __init__(self, gpu_memory: Callable[[], float] | None = None) -> None:
        self._observed: list[str] = []
        self._gpu_memory = gpu_memory

    def observe_request(self, input_tokens: int, output_tokens: int) -> None:
        self._observed.append(f"h\tnv_llm_input_token_len\tresponse_metric_type\ttotal_input_tokens\t{input_tokens}")
        self._observed.append(f"h\tnv_llm_output_token_len\tresponse_metric_type\ttotal_output_tokens\t{output_tokens}")

    def lines(self, s: IterationStats, rejected: int = 0) -> str:
        """`s`: an `inflight_batcher.IterationStats`; `rejected`: requests refused before the executor."""
        waiting = max(0, s.active - s.scheduled) + s.queued
        values = {
            "nv_trt_llm_request_metrics": [s.active, s.max_batch_size, s.scheduled, s.context_requests, waiting],
            "nv_trt_llm_runtime_memory_metrics": [
                _rss_bytes(),
                self._gpu_memory() if self._gpu_memory is not None else None,
            ],
            "nv_trt_llm_kv_cache_block_metrics": [
                s.max_blocks,
                s.free_blocks,
                s.used_blocks,
                s.tokens_per_block,
                s.reused_blocks,  # since start (TensorRT-LLM's reusedBlocks); prefix reuse
                s.used_blocks / s.max_blocks if s.max_blocks else 0.0,
                # Host offload (kv_cache_host_memory_bytes): blocks held in the host pool; since start, blocks
                # copied there on eviction and back for a request. Left out without a host pool.
                *((s.host_blocks, s.offloaded_blocks, s.onboarded_blocks) if s.max_host_blocks else (None,) * 3),
            ],
            "nv_trt_llm_inflight_batcher_metrics": [s.context_tokens, s.generation_requests, s.paused],
            "nv_trt_llm_general_metrics": [s.timestamp, s.iteration],
            "nv_trt_llm_request_outcome_metrics": [
                s.completed,
                s.cancelled,
                s.failed,
                rejected,
                s.preemptions,
                s.failed_steps,
            ],
        }
        out = []
        for name, kind, _, key, labels in FAMILIES:
            for label, v in zip(labels, values.get(name, ()), strict=True):
                if v is None:
                    continue
                out.append(f"{kind}\t{name}\t{key}\t{label}\t{float(v)!r}")
        out += self._observed
        self._observed = []
        return "\n".join(out)
