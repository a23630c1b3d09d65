"""Loading an engine directory and running forward steps on it."""

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tensorrt_llm._utils import str_to_dtype
from tensorrt_llm.builder import EngineConfig
from tensorrt_llm.models import CausalLM, get_family
from tensorrt_llm.quantization.convert import apply_quant
from tensorrt_llm.runtime.cuda_graph import StepGraphs
from tensorrt_llm.runtime.kv_cache import KVCachePool, kv_cache_dtype
from tensorrt_llm.runtime.step import StepInput


def read_engine_config(engine_dir: Path | str, rank: int = 0) -> EngineConfig:
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise FileNotFoundError(f"engine directory {engine_dir} does not exist")
    path = engine_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{engine_dir} holds no config.json: not an engine directory, or its build did not finish "
            "(build it with trtllm-build --output_dir)"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"engine config {path} is not valid JSON: {e}") from None
    return EngineConfig.from_dict(d, rank)


class Engine:
    """One rank's model, loaded and ready: `forward(step, kv)` → logits."""

    def __init__(self, config: EngineConfig, model: CausalLM, device: torch.device) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.dtype = str_to_dtype(config.dtype)
        # what the KV cache stores: the engine dtype, or int8 / e4m3 (kv_cache_quant_algo INT8 / FP8)
        self.kv_dtype = kv_cache_dtype(getattr(config, "quantization", None), self.dtype)
        self.graphs: StepGraphs | None = None

    @classmethod
    def from_dir(
        cls,
        engine_dir: Path | str,
        device: str | torch.device | None = None,
        rank: int = 0,
        attention_window: int | None = None,
        sink_tokens: int = 0,
    ) -> "Engine":
        """`attention_window` (TensorRT-LLM's `max_attention_window_size`): every layer attends to at most
        that many of the latest keys (none when it covers `max_seq_len`).
        `sink_tokens` S (TensorRT-LLM's `sink_token_length`, StreamingLLM's attention sinks): the first S keys
        stay visible to every query of a windowed layer besides its window W, so a query at position p sees
        [0, S) U (p - W, p]; their KV blocks are never handed back. S needs a window, `attention_window` or the
        family's own (then asked for explicitly: a sliding-window family gets no sinks by default), and
        S < W. W counts the latest keys only (TensorRT-LLM's gpt-attention doc keeps the sinks inside its
        window of `max_attention_window_size` tokens). Positions are kept: keys and queries are rotated by
        their positions in the sequence (StreamingLLM and TensorRT-LLM's `streamingllm` mode use positions
        within the cache instead), and prompts are attended through the same mask (StreamingLLM's context
        phase is dense)."""
        config = read_engine_config(engine_dir, rank)
        if sink_tokens < 0 or (attention_window and sink_tokens >= attention_window):
            raise ValueError(
                f"sink_tokens ({sink_tokens}) must be >= 0 and fewer than the attention window ({attention_window})"
            )
        if attention_window and attention_window < config.build.max_seq_len:
            config = dataclasses.replace(config, model=config.model.with_attention_window(attention_window))
        m = config.model
        if sink_tokens and (not attention_window or any(m.attention_window(i) for i in range(m.num_hidden_layers))):
            # (a window covering max_seq_len hides nothing: the sinks would change nothing either)
            config = dataclasses.replace(config, model=m.with_attention_sinks(sink_tokens))
        if config.mapping.world_size > 1 and not torch.distributed.is_initialized():
            raise RuntimeError(
                f"engine has world_size {config.mapping.world_size}: start one process per rank "
                "(mpirun -n N) and call tensorrt_llm.runtime.init_distributed() first"
            )
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        weights_path = Path(engine_dir) / f"rank{rank}.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"engine weights {weights_path} are missing (world_size {config.mapping.world_size})"
            )
        return cls.from_weights(config, load_file(weights_path, device=str(device)), device, str(weights_path))

    @classmethod
    def from_weights(
        cls, config: EngineConfig, weights: dict[str, torch.Tensor], device: torch.device, source: str = "weights"
    ) -> "Engine":
        """An engine from converted weights already in memory (the builder's output for one rank)."""
        dtype = str_to_dtype(config.dtype)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # threads that run it set this device by index
            device = torch.device("cuda", torch.cuda.current_device())
        if config.kernels:
            from tensorrt_llm.kernels import tuning

            tuning.apply_configs(config.kernels)
        with torch.device("meta"):
            model = get_family(config.architecture).model_cls(config.model, dtype, config.mapping)
            apply_quant(model, config.quantization)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        bad = [k for k in expected.keys() & weights.keys() if weights[k].shape != expected[k].shape]
        # A quantized weight of the wrong kind (int8 where e4m3 is meant) would compute garbage, not fail.
        wrong_dtype = [
            f"{k} ({weights[k].dtype}, expected {expected[k].dtype})"
            for k in expected.keys() & weights.keys()
            if (weights[k].dtype.is_floating_point and weights[k].itemsize > 1)
            != (expected[k].dtype.is_floating_point and expected[k].itemsize > 1)
            or (weights[k].itemsize == 1 and weights[k].dtype != expected[k].dtype)
        ]
        if missing or unexpected or bad or wrong_dtype:
            raise ValueError(
                f"engine {source} do not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {bad[:5]}, wrong dtype {wrong_dtype[:5]}"
            )
        model.load_state_dict({k: v.to(device) for k, v in weights.items()}, assign=True, strict=False)
        # Buffers computed at construction (the rotary table) were made on the meta device.
        model.init_buffers(device)
        model.eval()
        return cls(config, model, device)

    @torch.inference_mode()
    def forward(self, step: StepInput, kv: KVCachePool) -> torch.Tensor:
        """Logits [N, vocab] (float32) for `step.logits_indices`; writes the step's K/V into `kv`.
        Steps whose shape has a captured CUDA graph (for this pool) replay it."""
        if self.graphs is not None and self.graphs.kv is kv:
            logits = self.graphs.run(step)
            if logits is not None:
                return logits
        return self.model(step, kv.k, kv.v)

    def capture_cuda_graphs(self, kv: KVCachePool, max_batch_size: int | None = None) -> None:
        """Captures generation steps up to `max_batch_size` and single-prompt steps (CUDA only)."""
        if self.device.type != "cuda":
            return
        b = self.config.build
        self.graphs = StepGraphs(self.model, kv, max_batch_size or b.max_batch_size, b.max_seq_len, b.max_num_tokens)

    # -- KV cache sizing ----------------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        m, tp = self.config.model, self.config.mapping.tp_size
        return KVCachePool.bytes_per_block(
            m.num_hidden_layers, self.config.build.tokens_per_block, max(m.num_key_value_heads // tp, 1),
            m.head_dim, self.kv_dtype,
        )  # fmt: skip

    def num_kv_blocks(self, free_gpu_mem_fraction: float = 0.9, max_tokens: int | None = None) -> int:
        """Blocks for the KV cache: `free_gpu_mem_fraction` of the memory free after the weights (on
        CUDA), capped by `max_tokens`. On CPU, room for max_batch_size full-length sequences."""
        if not 0.0 < free_gpu_mem_fraction <= 1.0:
            raise ValueError(f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {free_gpu_mem_fraction}")
        b, tpb = self.config.build, self.config.build.tokens_per_block
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # memory cached by the allocator (e.g. conversion temporaries) counts as free
            free, _ = torch.cuda.mem_get_info(self.device)
            blocks = int(free * free_gpu_mem_fraction) // self.kv_bytes_per_block()
        else:
            blocks = b.max_batch_size * -(-b.max_seq_len // tpb)
        if max_tokens is not None:
            blocks = min(blocks, -(-max_tokens // tpb))
        return blocks

    def make_kv_cache(self, num_blocks: int) -> KVCachePool:
        m, tp = self.config.model, self.config.mapping.tp_size
        return KVCachePool(
            m.num_hidden_layers, num_blocks, self.config.build.tokens_per_block,
            max(m.num_key_value_heads // tp, 1), m.head_dim, self.kv_dtype, self.device,
        )  # fmt: skip
