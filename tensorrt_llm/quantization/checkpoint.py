"""Quantized checkpoints as published on the hub: GPTQ and AWQ (int4) into int4 engines without
re-quantizing, and FP8 checkpoints in vLLM's compressed-tensors format (llm-compressor) into FP8 engines.

Both store, per linear layer `P` of Hugging Face's model, int4 values packed eight to an int32, scales
[K/g, N] and packed zero points [K/g, N/8]; a weight is w[n, k] = (q[n, k] - z[g(k), n]) * s[g(k), n]:

    GPTQ  P.qweight [K/8, N]  packed along K, nibble j of row i = input k = 8 i + j
          P.qzeros  [K/g, N/8] packed along N (nibble j = output 8 c + j); stored as z - 1 unless
                    checkpoint_format is gptq_v2;  P.g_idx [K] the group of each input (act-order)
    AWQ   P.qweight [K, N/8]  packed along N in the order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i holds output
          8 c + order[i]);  P.qzeros [K/g, N/8] the same;  zeros stored as they are

A family's conversion fuses (QKV, gate/up), splits (tensor parallelism) and permutes float weights. Rather
than teach every family packed layouts, conversion runs three times over views of the checkpoint: the
integer values q, the scales and the zero points, each expanded to a float [N, K] `P.weight`; every step a
family takes is a selection, permutation or concatenation of rows and columns, which moves the three alike.
`assemble` then packs q and takes one scale and zero per group back (checking they are constant over each
group, so a conversion that mixed columns fails loudly instead of computing something else).
A linear layer the checkpoint left in float (its scale view is NaN) is quantized here, with zero points.

FP8 (compressed-tensors, "float" weights of 8 bits): `P.weight` float8_e4m3fn [N, K], `P.weight_scale` [] or
[N, 1], `P.input_scale` [] (static activations). Per-channel weights come over exactly (values and scales move
as the int4 ones do); per-tensor weights of layers the engine fuses (q, k, v) cannot keep three scales, so
they are dequantized and quantized again with one (the largest, as vLLM does: the layer with that scale keeps
its values exactly). A fused layer's static input scale is the largest of its parts'.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tensorrt_llm import kernels
from tensorrt_llm.quantization import QuantConfig

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
VIEWS = ("q", "scale", "zero", "float")


def quant_config_from_hf(hf_config: dict) -> QuantConfig | None:
    """The engine quantization a checkpoint's `quantization_config` names (None: a float checkpoint)."""
    qc = hf_config.get("quantization_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return _compressed_tensors_fp8(qc)
    if method not in ("gptq", "awq"):
        raise ValueError(
            f"checkpoint quantization {method!r} is not supported (GPTQ and AWQ int4, and compressed-tensors FP8 are)"
        )
    if qc.get("bits", 4) != 4:
        raise ValueError(f"{method.upper()} checkpoints of {qc.get('bits')} bits are not supported (4 bits are)")
    if method == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
        raise ValueError(f"AWQ version {qc.get('version')!r} is not supported (the GEMM packing is)")
    if method == "awq" and not qc.get("zero_point", True):
        raise ValueError("AWQ checkpoints without zero points are not supported")
    group = int(qc.get("group_size", 128))
    if group == -1:
        raise ValueError(f"{method.upper()} with one group per column (group_size -1) is not supported")
    return QuantConfig("W4A16_GPTQ" if method == "gptq" else "W4A16_AWQ", group_size=group)


def _compressed_tensors_fp8(qc: dict) -> QuantConfig:
    """The FP8 schemes of compressed-tensors that the engine runs: per-tensor weights with static per-tensor
    activations (FP8), per-channel weights with dynamic per-token activations (FP8_PER_CHANNEL_PER_TOKEN)."""
    groups = list((qc.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise ValueError(f"compressed-tensors checkpoints with {len(groups)} config groups are not supported (one is)")
    w, a = groups[0].get("weights") or {}, groups[0].get("input_activations") or {}
    scheme = (
        w.get("type"), w.get("num_bits"), w.get("strategy"), a.get("type"), a.get("num_bits"), a.get("strategy"),
        bool(a.get("dynamic")),
    )  # fmt: skip
    if scheme == ("float", 8, "tensor", "float", 8, "tensor", False):
        return QuantConfig("FP8")
    if scheme == ("float", 8, "channel", "float", 8, "token", True):
        return QuantConfig("FP8_PER_CHANNEL_PER_TOKEN")
    raise ValueError(
        f"compressed-tensors scheme {scheme} is not supported: FP8 per-tensor weights with static per-tensor "
        "activations, or FP8 per-channel weights with dynamic per-token activations, are"
    )


def make_reader(
    get: Callable[[str], torch.Tensor], hf_config: dict, quant: QuantConfig
) -> Fp8Reader | PrequantizedReader:
    """The view-making reader of a quantized checkpoint of mode `quant`."""
    if quant.quant_algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
        return Fp8Reader(get)
    return PrequantizedReader(get, hf_config["quantization_config"], quant.quant_algo[6:].lower())


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 [..., C] → its eight 4-bit fields, lowest first: int64 [..., C, 8]."""
    shifts = torch.arange(0, 32, 4, device=packed.device)
    return (packed.to(torch.int64)[..., None] >> shifts) & 0xF


class PrequantizedReader:
    """Wraps a checkpoint getter; `view(kind)` is a getter returning, for each quantized layer's `P.weight`,
    its q values, scales or zeros expanded to [N, K] float32 (or the dequantized weight), and every other
    tensor as stored (for the "scale" and "zero" views, NaN for float linear weights, so that `assemble`
    knows them)."""

    VIEWS = VIEWS

    def __init__(self, get: Callable[[str], torch.Tensor], hf_quant: dict, method: str) -> None:
        self.get, self.method = get, method
        self.group = int(hf_quant.get("group_size", 128))
        self.zero_offset = 1 if method == "gptq" and hf_quant.get("checkpoint_format", "gptq") == "gptq" else 0

    def _unpack(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [N, K], scale [N, K], zero [N, K] of layer `prefix` (all float32, expanded per element)."""
        qweight, scales = self.get(prefix + "qweight"), self.get(prefix + "scales").float()  # scales [K/g, N]
        zeros = _nibbles(self.get(prefix + "qzeros")).flatten(-2)  # [K/g, N] (AWQ: still in packed order)
        if self.method == "gptq":
            q = _nibbles(qweight).permute(0, 2, 1).reshape(-1, qweight.shape[1])  # [K, N]
            zeros = zeros + self.zero_offset
            K = q.shape[0]
            try:
                g_idx = self.get(prefix + "g_idx").long()
            except KeyError:
                g_idx = torch.arange(K) // self.group
        else:
            order = torch.tensor(AWQ_ORDER)
            # nibble i of packed column c holds output 8 c + order[i]: invert that placement
            inverse = torch.argsort(order)
            q = _nibbles(qweight)[..., inverse].flatten(-2)  # [K, N]
            zeros = zeros.view(zeros.shape[0], -1, 8)[..., inverse].flatten(-2)
            K = q.shape[0]
            g_idx = torch.arange(K) // self.group
        scale = scales[g_idx]  # [K, N]
        zero = zeros[g_idx].float()
        return q.t().float(), scale.t().contiguous(), zero.t().contiguous()

    def view(self, kind: str) -> Callable[[str], torch.Tensor]:
        """`kind`: one of VIEWS ("float": the dequantized weights, for calibration and for weights that the
        engine keeps in float or quantizes itself, such as experts)."""
        if kind not in VIEWS:
            raise ValueError(kind)

        def get(name: str) -> torch.Tensor:
            if name.endswith(".weight"):
                prefix = name[: -len("weight")]
                try:
                    parts = self._unpack(prefix)
                except KeyError:
                    parts = None
                if parts is not None:
                    q, scale, zero = parts
                    return (q - zero) * scale if kind == "float" else parts[VIEWS.index(kind)]
                w = self.get(name)
                if kind in ("scale", "zero") and w.dim() == 2:
                    return torch.full(w.shape, float("nan"))
                return w
            return self.get(name)

        return get

    def assemble(
        self, views: dict[str, dict[str, torch.Tensor]], model: nn.Module, quant: QuantConfig, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        return assemble(views, model, quant, dtype)


def _float_base(
    views: dict[str, dict[str, torch.Tensor]], model: nn.Module, quant: QuantConfig, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The engine tensors other than the quantized linear layers: as the "q" view converted them (norms,
    embeddings: stored as they are), except the weights the checkpoint may hold quantized that the engine
    keeps in float (linear layers under exclude_modules) or quantizes itself (experts): those come from the
    dequantized view."""
    from tensorrt_llm.layers import ColumnLinear, MoeMLP, RowLinear
    from tensorrt_llm.quantization.convert import quantize_experts, quantized_linears

    out = dict(views["q"])
    quantized = {name for name, _ in quantized_linears(model, quant)}
    for name, m in model.named_modules():
        if isinstance(m, ColumnLinear | RowLinear) and name not in quantized:
            keys = [f"{name}.weight"]
        elif isinstance(m, MoeMLP):
            keys = [f"{name}.gate_up", f"{name}.down"]
        else:
            continue
        for k in keys:
            out[k] = views["float"][k].to(dtype)
    quantize_experts(out, model, quant)
    return out


def assemble(
    views: dict[str, dict[str, torch.Tensor]], model: nn.Module, quant: QuantConfig, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Engine weights of one rank from the converted views (see the module docstring)."""
    from tensorrt_llm.quantization.convert import quantized_linears

    out = _float_base(views, model, quant, dtype)
    g = quant.group_size
    for name, _ in quantized_linears(model, quant):
        key = f"{name}.weight"
        q, s, z = views["q"][key], views["scale"][key].float(), views["zero"][key].float()
        N, K = q.shape
        if torch.isnan(s).any():
            if not torch.isnan(s).all():
                raise ValueError(f"{key}: fused from quantized and float checkpoint layers; cannot build int4")
            packed, scale, zero = kernels.quantize_int4_groupwise_asym(q.float(), g)
        else:
            sg, zg = s.view(N, K // g, g), z.view(N, K // g, g)
            if not (torch.equal(sg, sg[..., :1].expand_as(sg)) and torch.equal(zg, zg[..., :1].expand_as(zg))):
                raise ValueError(
                    f"{key}: scales vary within a group of {g} inputs (act-order GPTQ, desc_act=true, is not "
                    "supported: use a checkpoint quantized without it)"
                )
            scale = sg[..., 0].t().contiguous()  # [K/g, N]
            zero = (zg[..., 0] * sg[..., 0]).t().contiguous()  # w = q * s - z * s
            packed = kernels.pack_int4(q.round().to(torch.uint8))
        out[key] = packed
        out[f"{name}.weight_scale"] = scale.to(torch.float16)
        out[f"{name}.weight_zero"] = zero.to(torch.float16)
    return out


class Fp8Reader:
    """Views of a compressed-tensors FP8 checkpoint (see the module docstring), each an [N, K] float32 per
    quantized layer: "q" the e4m3 values, "scale" the weight scale, "input" the static input scale (NaN
    where the checkpoint has none, and for float layers), "float" the dequantized weight."""

    VIEWS = ("q", "scale", "input", "float")

    def __init__(self, get: Callable[[str], torch.Tensor]) -> None:
        self.get = get

    def view(self, kind: str) -> Callable[[str], torch.Tensor]:
        if kind not in self.VIEWS:
            raise ValueError(kind)

        def get(name: str) -> torch.Tensor:
            w = self.get(name)
            if not (name.endswith(".weight") and w.dtype == torch.float8_e4m3fn):
                if kind in ("scale", "input") and name.endswith(".weight") and w.dim() == 2:
                    return torch.full(w.shape, float("nan"))
                return w
            prefix = name[: -len("weight")]
            scale = self.get(prefix + "weight_scale").float().reshape(-1, 1)  # [1, 1] or [N, 1]
            if kind == "q":
                return w.float()
            if kind == "float":
                return w.float() * scale
            if kind == "scale":
                return scale.expand(w.shape)
            try:
                return self.get(prefix + "input_scale").float().reshape(1, 1).expand(w.shape)
            except KeyError:
                return torch.full(w.shape, float("nan"))

        return get

    def assemble(
        self, views: dict[str, dict[str, torch.Tensor]], model: nn.Module, quant: QuantConfig, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        from tensorrt_llm.quantization.convert import quantized_linears

        out = _float_base(views, model, quant, dtype)
        per_channel = quant.quant_algo == "FP8_PER_CHANNEL_PER_TOKEN"
        for name, _ in quantized_linears(model, quant):
            key = f"{name}.weight"
            s, w = views["scale"][key].float(), views["float"][key].float()
            if per_channel and not torch.isnan(s).any() and torch.equal(s, s[:, :1].expand_as(s)):
                q, scale = views["q"][key].float().to(torch.float8_e4m3fn), s[:, 0].contiguous()
            else:  # per tensor, or a layer stored in float: one scale for the (fused) weight
                q, scale = kernels.quantize_fp8(w, per_channel=per_channel)
            out[key], out[f"{name}.weight_scale"] = q, scale
            if not per_channel:
                x = views["input"][key]
                if torch.isnan(x).any():
                    raise ValueError(f"{key}: the checkpoint has no input_scale for (part of) this layer")
                out[f"{name}.input_scale"] = x.amax().float().reshape(())
        return out
