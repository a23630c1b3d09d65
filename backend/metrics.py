"""The `nv_trt_llm_*` metric families (spec section 9) as Python-backend custom metrics.

Values come from `Executor.stats()` (an `IterationStats`); fields are read by name with fallbacks so that a
stats object missing a field leaves that gauge at 0 rather than failing the update.
"""

from __future__ import annotations

import os
import time

from backend.triton_utils import pb_utils

TOKEN_LEN_BUCKETS = [10.0, 50.0, 100.0, 500.0, 1000.0]


def _get(stats, *names, default=0):
    for n in names:
        v = stats.get(n) if isinstance(stats, dict) else getattr(stats, n, None)
        if v is not None:
            return v
    return default


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class EngineMetrics:
    """Creates the families once per model instance; `update(stats)` sets every gauge."""

    def __init__(self, model: str, version: str):
        self.enabled = pb_utils is not None and hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        mf = pb_utils.MetricFamily
        base = {"model": model, "version": version}

        def family(name: str, desc: str, label: str, values: list[str], kind=mf.GAUGE):
            fam = mf(name=name, description=desc, kind=kind)
            return fam, {v: fam.Metric(labels={**base, label: v}) for v in values}

        self._fams = []  # keep families alive: a collected family unregisters its metrics
        f, self.request = family(
            "nv_trt_llm_request_metrics",
            "TRT LLM request metrics",
            "request_type",
            ["active", "max", "scheduled", "context", "waiting"],
        )
        self._fams.append(f)
        f, self.memory = family(
            "nv_trt_llm_runtime_memory_metrics",
            "TRT LLM runtime memory metrics",
            "memory_type",
            ["cpu", "gpu", "pinned"],
        )
        self._fams.append(f)
        f, self.kv = family(
            "nv_trt_llm_kv_cache_block_metrics",
            "TRT LLM KV cache block metrics",
            "kv_cache_block_type",
            ["max", "free", "used", "tokens_per", "reused", "fraction"],
        )
        self._fams.append(f)
        f, self.ifb = family(
            "nv_trt_llm_inflight_batcher_metrics",
            "TRT LLM inflight_batcher-specific metrics",
            "inflight_batcher_specific_metric",
            ["total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests"],
        )
        self._fams.append(f)
        f, self.general = family(
            "nv_trt_llm_general_metrics", "General TRT LLM metrics", "general_type", ["timestamp", "iteration_counter"]
        )
        self._fams.append(f)
        f, self.disagg = family(
            "nv_trt_llm_disaggregated_serving_metrics",
            "TRT LLM disaggregated serving metrics",
            "disaggregated_serving_type",
            ["kv_cache_transfer_ms", "request_count"],
            kind=mf.COUNTER,
        )
        self._fams.append(f)
        self.input_len = self.output_len = None
        if hasattr(mf, "HISTOGRAM"):
            fi = mf(name="nv_llm_input_token_len", description="TRT LLM response input token length", kind=mf.HISTOGRAM)
            fo = mf(
                name="nv_llm_output_token_len", description="TRT LLM response output token length", kind=mf.HISTOGRAM
            )
            self._fams += [fi, fo]
            self.input_len = fi.Metric(
                labels={**base, "response_metric_type": "total_input_tokens"}, buckets=TOKEN_LEN_BUCKETS
            )
            self.output_len = fo.Metric(
                labels={**base, "response_metric_type": "total_output_tokens"}, buckets=TOKEN_LEN_BUCKETS
            )

    def observe_request(self, input_tokens: int, output_tokens: int) -> None:
        if self.enabled and self.input_len is not None:
            self.input_len.observe(float(input_tokens))
            self.output_len.observe(float(output_tokens))

    def update(self, stats, max_batch_size: int = 0) -> None:
        if not self.enabled or stats is None:
            return
        active = _get(stats, "active", "num_active_requests", "active_requests")
        scheduled = _get(stats, "scheduled", "num_scheduled_requests", "scheduled_requests")
        context = _get(stats, "context_requests", "num_context_requests", "context")
        queued = _get(stats, "queued", "num_queued_requests", "queued_requests")
        r = self.request
        r["active"].set(float(active))
        r["max"].set(float(_get(stats, "max_batch_size", "max_num_active_requests", default=max_batch_size)))
        r["scheduled"].set(float(scheduled))
        r["context"].set(float(context))
        r["waiting"].set(float(max(0, active - scheduled) + queued))

        self.memory["cpu"].set(float(_get(stats, "cpu_mem_usage", default=_rss_bytes())))
        self.memory["gpu"].set(float(_get(stats, "gpu_mem_usage")))
        self.memory["pinned"].set(float(_get(stats, "pinned_mem_usage")))

        kv = _get(stats, "kv_cache_stats", "kv_cache", default=None) or stats
        max_blocks = float(_get(kv, "max_num_blocks", "kv_max_blocks", "max_blocks"))
        used = float(_get(kv, "used_num_blocks", "kv_used_blocks", "used_blocks"))
        free = float(_get(kv, "free_num_blocks", "kv_free_blocks", "free_blocks", default=max_blocks - used))
        self.kv["max"].set(max_blocks)
        self.kv["free"].set(free)
        self.kv["used"].set(used)
        self.kv["tokens_per"].set(float(_get(kv, "tokens_per_block", "kv_tokens_per_block")))
        self.kv["reused"].set(float(_get(kv, "reused_blocks", "kv_reused_blocks")))
        self.kv["fraction"].set(used / max_blocks if max_blocks else 0.0)

        self.ifb["total_context_tokens"].set(float(_get(stats, "context_tokens", "num_context_tokens")))
        self.ifb["generation_requests"].set(float(_get(stats, "generation_requests", "num_gen_requests")))
        self.ifb["micro_batch_id"].set(float(_get(stats, "micro_batch_id")))
        self.ifb["paused_requests"].set(float(_get(stats, "paused", "num_paused_requests", "paused_requests")))

        ts = _get(stats, "timestamp", default=None)
        self.general["timestamp"].set(float(ts if ts is not None else time.time()))
        self.general["iteration_counter"].set(float(_get(stats, "iteration", "iteration_counter", "iter")))
