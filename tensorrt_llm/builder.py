"""Checkpoint → engine directory: `config.json` plus one `rank{N}.safetensors` per rank.

The engine keeps weights already fused (QKV, gate/up), split per rank and cast to the engine dtype, so
loading is a plain read; the build limits the runtime sizes its buffers and validates requests with."""

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tensorrt_llm import ENGINE_FORMAT_VERSION, __version__
from tensorrt_llm._utils import dtype_to_str, str_to_dtype
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models import ModelConfig, get_family
from tensorrt_llm.quantization import QuantConfig
from tensorrt_llm.quantization.checkpoint import make_reader, quant_config_from_hf
from tensorrt_llm.quantization.convert import (
    apply_quant,
    calibrate,
    calibration_samples,
    needs_calibration,
    quantize_weights,
)


@dataclass(frozen=True)
class BuildConfig:
    """Limits baked into an engine. `max_seq_len` bounds prompt + output of one sequence."""

    max_batch_size: int = 8
    max_input_len: int = 1024
    max_seq_len: int = 2048
    max_num_tokens: int = 8192
    tokens_per_block: int = 64
    max_beam_width: int = 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"build config: {name} must be a positive integer, got {value!r}")
        if self.max_input_len > self.max_seq_len:
            raise ValueError(
                f"build config: max_input_len ({self.max_input_len}) exceeds max_seq_len ({self.max_seq_len})"
            )
        if self.tokens_per_block & (self.tokens_per_block - 1):
            raise ValueError(f"build config: tokens_per_block must be a power of two, got {self.tokens_per_block}")


@dataclass(frozen=True)
class EngineConfig:
    architecture: str
    dtype: str
    model: ModelConfig
    mapping: Mapping
    build: BuildConfig
    plugins: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)
    quantization: QuantConfig = QuantConfig()
    format_version: int = ENGINE_FORMAT_VERSION

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "builder_version": __version__,
            "architecture": self.architecture,
            "dtype": self.dtype,
            "model": self.model.to_dict(),
            "mapping": self.mapping.to_dict(),
            "build": asdict(self.build),
            "plugins": self.plugins,
            "kernels": self.kernels,
            "quantization": self.quantization.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, rank: int = 0) -> "EngineConfig":
        version = d.get("format_version")
        # Version 1 engines (before quantization) read as float engines.
        if version not in (1, ENGINE_FORMAT_VERSION):
            raise ValueError(
                f"engine format version {version!r} does not match this runtime's {ENGINE_FORMAT_VERSION}: "
                f"rebuild the engine with this version's trtllm-build (engine built by "
                f"{d.get('builder_version', 'an unknown builder')}, runtime {__version__})"
            )
        try:
            return cls(
                architecture=d["architecture"],
                dtype=d["dtype"],
                model=ModelConfig.from_dict(d["model"]),
                mapping=Mapping(**d["mapping"], rank=rank),
                build=BuildConfig(**d["build"]),
                plugins=d.get("plugins", {}),
                kernels=d.get("kernels", {}),
                quantization=QuantConfig.from_dict(d.get("quantization")),
            )
        except KeyError as e:
            raise ValueError(f"engine config.json lacks the field {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"engine config.json is malformed: {e}") from None


def read_hf_config(model_dir: Path | str) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no Hugging Face config.json in {model_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


class _CheckpointReader:
    """Reads Hugging Face tensors by name from safetensors shards (lazily) or PyTorch .bin files."""

    def __init__(self, model_dir: Path) -> None:
        self.files: dict[str, Path] = {}
        shards = sorted(model_dir.glob("*.safetensors"))
        bins = sorted(model_dir.glob("pytorch_model*.bin"))
        self._bin: dict[str, torch.Tensor] = {}
        if shards:
            for shard in shards:
                with safe_open(shard, "pt") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                        self.files[name] = shard
        elif bins:
            for b in bins:
                self._bin.update(torch.load(b, map_location="cpu", weights_only=True))
        else:
            raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in {model_dir}")

    def __call__(self, name: str) -> torch.Tensor:
        if name in self._bin:
            return self._bin[name]
        if name not in self.files:
            raise KeyError(f"checkpoint lacks the tensor {name!r}")
        with safe_open(self.files[name], "pt") as f:
            return f.get_tensor(name)


def _hf_tensor_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a Hugging Face checkpoint of `hf_config`, read off the transformers
    model built on the meta device (no memory, no weights), so every family's layout is known exactly."""
    import transformers

    arch = (hf_config.get("architectures") or ["LlamaForCausalLM"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no {arch}: cannot make weights of its shape")
    hf = cls.config_class.from_dict({k: v for k, v in hf_config.items() if k != "architectures"})
    with torch.device("meta"):
        model = cls(hf)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _random_reader(hf_config: dict, cfg: ModelConfig, device: str, seed: int = 0):
    """Random weights of Hugging Face shapes, for benchmarks built from a config alone: norms weigh 1,
    biases 0."""
    shapes = _hf_tensor_shapes(hf_config)
    gen = torch.Generator(device).manual_seed(seed)

    def get(name: str) -> torch.Tensor:
        if name not in shapes:
            raise KeyError(f"a {cfg.architecture} checkpoint has no tensor {name!r}")
        shape = shapes[name]
        if name.endswith("norm.weight"):
            return torch.full(shape, 0.0 if cfg.norm_unit_offset else 1.0, device=device)
        if len(shape) == 1:
            return torch.zeros(shape, device=device)
        # std 0.02 as Hugging Face initialises; scaled down by depth to keep fp16 activations finite.
        return torch.randn(shape, generator=gen, device=device) * (0.02 / math.sqrt(cfg.num_hidden_layers / 8 + 1))

    return get


def linear_weight_shapes(
    model: ModelConfig, mapping: Mapping, dtype: torch.dtype, quant: QuantConfig = QuantConfig()
) -> list[tuple[int, int]]:
    """The distinct (N, K) weight shapes of one rank's float linear layers (QKV, O, gate_up, down, lm_head;
    those `quant` quantizes run other kernels), read off the model built on the meta device, so every
    family reports its own."""
    from tensorrt_llm.layers import ColumnLinear, RowLinear

    rank0 = Mapping(mapping.world_size, mapping.tp_size, mapping.pp_size, 0)
    with torch.device("meta"):
        net = get_family(model.architecture).model_cls(model, dtype, rank0)
        apply_quant(net, quant)
    shapes = {
        tuple(m.weight.shape) for m in net.modules() if isinstance(m, ColumnLinear | RowLinear) and m.quant is None
    }
    return sorted(shapes)


def tune_kernels(
    model: ModelConfig,
    mapping: Mapping,
    build: BuildConfig,
    dtype: torch.dtype,
    device: str,
    quant: QuantConfig = QuantConfig(),
) -> dict[str, dict]:
    """Kernel launch choices timed on the build GPU and kept in the engine (a timing cache), so that
    loading tunes nothing: attention launch configs, and the linear shapes that run the Triton GEMV at
    batch-1 decode. Building on a CPU keeps the defaults (recorded all the same; no GEMV)."""
    from tensorrt_llm.kernels import tuning

    if torch.device(device).type != "cuda":  # (a GEMV choice in force in this process was made elsewhere)
        return {k: v for k, v in tuning.current_configs().items() if k != tuning.GEMV_KEY}
    tp = mapping.tp_size
    chosen = tuning.tune_attention(
        model.num_attention_heads // tp, max(model.num_key_value_heads // tp, 1), model.head_dim,
        build.tokens_per_block, dtype, device,
    )  # fmt: skip
    return chosen | tuning.tune_gemv(linear_weight_shapes(model, mapping, dtype, quant), dtype, device)


@dataclass(frozen=True)
class CalibConfig:
    """Calibration text for static scales (TensorRT-LLM's quantize flags): `dataset` a text file (lines, or
    paragraphs split by blank lines), default the standard library's help topics; `size` samples of at
    most `max_seq_length` tokens."""

    dataset: str | None = None
    size: int = 64
    max_seq_length: int = 512


def convert_in_memory(
    hf_config: dict, dtype: str = "float16", build: BuildConfig = BuildConfig(), device: str = "cuda", rank: int = 0,
    mapping: Mapping = Mapping(), quant: QuantConfig = QuantConfig(), calib: CalibConfig | None = None,
) -> tuple[EngineConfig, dict[str, torch.Tensor]]:  # fmt: skip
    """Random weights of `hf_config`'s shape, converted (and quantized) for one rank and kept in memory
    (benchmarks; calibration on random token ids)."""
    family = get_family((hf_config.get("architectures") or ["LlamaForCausalLM"])[0])
    model_cfg = family.config_from_hf(hf_config)
    rank_map = Mapping(mapping.world_size, mapping.tp_size, mapping.pp_size, rank)
    get = _random_reader(hf_config, model_cfg, device)
    torch_dtype = str_to_dtype(dtype)
    calibration = None
    if needs_calibration(quant):
        calib = calib or CalibConfig()
        samples = calibration_samples(None, model_cfg.vocab_size, None, calib.size, calib.max_seq_length)
        calibration = _calibrate(family, get, model_cfg, torch_dtype, device, samples, build)
    weights = family.convert_weights(get, model_cfg, rank_map, torch_dtype)
    if quant.enabled:
        with torch.device("meta"):
            net = family.model_cls(model_cfg, torch_dtype, rank_map)
        weights = quantize_weights(weights, net, quant, calibration)
    cfg = EngineConfig(model_cfg.architecture, dtype, model_cfg, rank_map, build, quantization=quant)
    return cfg, weights


def _calibrate(family, get, model_cfg: ModelConfig, dtype: torch.dtype, device: str, samples, build: BuildConfig):
    """Calibration runs the whole float model (one rank of world size 1) on `device`."""
    from tensorrt_llm.runtime.engine import Engine

    weights = family.convert_weights(get, model_cfg, Mapping(), dtype)
    cfg = EngineConfig(model_cfg.architecture, dtype_to_str(dtype), model_cfg, Mapping(), build)
    engine = Engine.from_weights(cfg, weights, torch.device(device))
    del weights
    result = calibrate(engine.model, samples, build.tokens_per_block)
    del engine
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return result


def build_engine(
    output_dir: Path | str,
    model_dir: Path | str | None = None,
    hf_config: dict | None = None,
    dtype: str = "float16",
    mapping: Mapping = Mapping(),
    build: BuildConfig = BuildConfig(),
    plugins: dict | None = None,
    device: str = "cpu",
    quant: QuantConfig = QuantConfig(),
    calib: CalibConfig = CalibConfig(),
) -> EngineConfig:
    """Builds an engine from a checkpoint directory, or with random weights from `hf_config` alone;
    quantized as `quant` says (calibrated on `calib`'s text first where static scales need it)."""
    if model_dir is None and hf_config is None:
        raise ValueError("give a checkpoint directory (--model_dir) or a Hugging Face config (--model_config)")
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        hf_config = read_hf_config(model_dir)
    archs = hf_config.get("architectures") or []
    if len(archs) != 1:
        raise ValueError(f"config.json must name exactly one architecture, found {archs}")
    family = get_family(archs[0])
    model_cfg = family.config_from_hf(hf_config)
    torch_dtype = str_to_dtype(dtype)
    if build.max_seq_len > model_cfg.max_position_embeddings:
        raise ValueError(
            f"max_seq_len ({build.max_seq_len}) exceeds the model's max_position_embeddings "
            f"({model_cfg.max_position_embeddings})"
        )
    prequant = quant_config_from_hf(hf_config) if model_dir is not None else None
    if prequant is not None:
        if quant.quant_algo not in (None, prequant.quant_algo):
            raise ValueError(f"the checkpoint is {prequant.quant_algo}: it cannot be built as {quant.quant_algo}")
        quant = dataclasses.replace(quant, quant_algo=prequant.quant_algo, group_size=prequant.group_size)
    with torch.device("meta"):  # refuses shapes the mode cannot hold (int4 groups) before any work
        apply_quant(family.model_cls(model_cfg, torch_dtype, Mapping(mapping.world_size, mapping.tp_size)), quant)
    get = _CheckpointReader(model_dir) if model_dir is not None else _random_reader(hf_config, model_cfg, device)
    reader = None
    if prequant is not None:
        reader = make_reader(get, hf_config, prequant)
    calibration = None
    # a quantized checkpoint brings its weights' scales: only a KV cache to quantize needs calibration then
    if needs_calibration(quant if reader is None else dataclasses.replace(quant, quant_algo=None)):
        samples = calibration_samples(
            None if model_dir is None else str(model_dir), model_cfg.vocab_size, calib.dataset, calib.size,
            min(calib.max_seq_length, build.max_seq_len),
        )  # fmt: skip
        float_get = get if reader is None else reader.view("float")
        calibration = _calibrate(family, float_get, model_cfg, torch_dtype, device, samples, build)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for rank in range(mapping.world_size):
        rank_map = Mapping(mapping.world_size, mapping.tp_size, mapping.pp_size, rank)
        with torch.device("meta"):
            net = family.model_cls(model_cfg, torch_dtype, rank_map)
        if reader is not None:
            # integer and e4m3 values are exact in the engine dtype; scales and dequantized weights keep float32
            views = {
                kind: family.convert_weights(
                    reader.view(kind), model_cfg, rank_map, torch_dtype if kind == "q" else torch.float32
                )
                for kind in reader.VIEWS
            }
            weights = reader.assemble(views, net, quant, torch_dtype)
            del views
            if quant.kv_cache_quant_algo is not None:  # the linear layers are done: only the KV scales
                weights = quantize_weights(weights, net, dataclasses.replace(quant, quant_algo=None), calibration)
        else:
            weights = family.convert_weights(get, model_cfg, rank_map, torch_dtype)
            if quant.enabled:
                weights = quantize_weights({k: v.to(device) for k, v in weights.items()}, net, quant, calibration)
        save_file({k: v.cpu().contiguous() for k, v in weights.items()}, out / f"rank{rank}.safetensors")
        del weights
    cfg = EngineConfig(
        architecture=archs[0],
        dtype=dtype_to_str(torch_dtype),
        model=model_cfg,
        mapping=mapping,
        build=build,
        plugins=dict(plugins or {}),
        kernels=tune_kernels(model_cfg, mapping, build, torch_dtype, device, quant),
        quantization=quant,
    )
    # config.json is written last: a directory without it is an unfinished build, and loading says so.
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return cfg
