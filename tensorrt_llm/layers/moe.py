import torch
import torch.distributed as dist
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers.mlp import GatedMLP
from tensorrt_llm.mapping import Mapping


class MoeMLP(nn.Module):
    """Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): a router scores `num_experts` gated MLPs per token, the
    `top_k` most probable run, their outputs weighted by those probabilities (renormalised over the chosen
    ones with `norm_topk_prob`), as Hugging Face routes: softmax over the router logits in float32, then top-k.

    Weights (per rank): `router.weight` [E, H] whole on every rank; `gate_up` [E, 2I/tp, H] (rows of each
    expert: gate | up of this rank), `down` [E, H, I/tp], each expert split as the dense MLP is, with one
    all-reduce after the experts' sum. With `shared_intermediate_size`, a shared expert (`shared`, a
    GatedMLP) runs on every token, weighted by sigmoid(`shared_gate.weight` [1, H] · x) (Qwen2-MoE).

    Two paths, the same result. Dense (steps under ROUTED_MIN_TOKENS, and any step a CUDA graph captures):
    every expert runs on every token of the step, weighted by its routing weight (0 for the ones not
    chosen): shapes and work fixed by the step alone, so CUDA graphs capture it, and a decode step reads each
    expert's weights once, as a grouped kernel would. Routed (larger steps, eager: prefill): tokens are
    sorted by expert and each expert runs on its own tokens only, top_k / num_experts of the dense
    arithmetic, at the price of one host synchronisation for the counts."""

    # Below this many tokens a step reads every expert's weights anyway (the GEMMs are bandwidth-bound):
    # the dense path costs no more and needs no host synchronisation.
    ROUTED_MIN_TOKENS = 256

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
        act: str = "silu",
        shared_intermediate_size: int = 0,
        router: str = "softmax",
        routed_scaling_factor: float = 1.0,
        groups: int = 1,
        topk_groups: int = 1,
        shared_gated: bool = True,
    ) -> None:
        super().__init__()
        if act not in tf.GATED_ACTIVATIONS:
            raise ValueError(f"unsupported gated activation {act!r}: supported are {sorted(tf.GATED_ACTIVATIONS)}")
        if intermediate_size % mapping.tp_size:
            raise ValueError(f"expert intermediate_size ({intermediate_size}) is not divisible by tp_size")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok ({top_k}) must be between 1 and num_experts ({num_experts})")
        self.mapping, self.top_k, self.norm_topk_prob = mapping, top_k, norm_topk_prob
        self.act_and_mul = tf.GATED_ACTIVATIONS[act]
        inter = intermediate_size // mapping.tp_size
        self.router = nn.Linear(hidden_size, num_experts, bias=False, dtype=dtype)
        self.router.weight.requires_grad_(False)
        self.sigmoid_router = router == "sigmoid"
        self.routed_scaling_factor, self.groups, self.topk_groups = routed_scaling_factor, groups, topk_groups
        self.score_bias = None
        if self.sigmoid_router:  # GLM-4.5, DeepSeek-V3: the choice's bias [E] (e_score_correction_bias)
            self.score_bias = nn.Parameter(torch.zeros(num_experts, dtype=torch.float32), requires_grad=False)
        self.gate_up = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden_size, dtype=dtype), requires_grad=False)
        self.down = nn.Parameter(torch.empty(num_experts, hidden_size, inter, dtype=dtype), requires_grad=False)
        self.shared = self.shared_gate = None
        if shared_intermediate_size:  # split like a dense MLP (it reduces itself); Qwen2-MoE's gate whole
            self.shared = GatedMLP(hidden_size, shared_intermediate_size, False, dtype, mapping, act)
            if shared_gated:
                self.shared_gate = nn.Linear(hidden_size, 1, bias=False, dtype=dtype)
                self.shared_gate.weight.requires_grad_(False)

    # Expert weights can be quantized in these modes (SmoothQuant's per-expert smoothing is not built).
    QUANT_ALGOS = ("W8A16", "W4A16", "FP8", "FP8_PER_CHANNEL_PER_TOKEN")
    quant: str | None = None
    group_size: int = 0

    def set_quant(self, algo: str, group_size: int = 128) -> bool:
        """Replaces the float experts by `algo`'s parameters (`gate_up`, `down` and their `_scale`), as
        `quantization` lays out a linear layer's, with a leading expert dimension; False (experts stay float)
        for a mode experts do not take. FP8 experts quantize their inputs per token: calibration measures
        the layer's input, not each expert's."""
        if algo not in self.QUANT_ALGOS:
            return False
        for name in ("gate_up", "down"):
            E, N, K = getattr(self, name).shape
            dev = getattr(self, name).device
            delattr(self, name)
            if algo == "W4A16":
                if K % group_size:
                    raise ValueError(f"int4 experts: in_features ({K}) is not a multiple of group_size {group_size}")
                data, scale = (E, N, K // 2, torch.uint8), (E, K // group_size, N, torch.float16)
            elif algo == "W8A16":
                data, scale = (E, N, K, torch.int8), (E, N, torch.float32)
            else:  # FP8: a scale per expert, or per expert and channel
                data = (E, N, K, torch.float8_e4m3fn)
                scale = (E, torch.float32) if algo == "FP8" else (E, N, torch.float32)
            for suffix, (*shape, dtype) in (("", data), ("_scale", scale)):
                t = torch.empty(shape, dtype=dtype, device=dev)
                setattr(self, name + suffix, nn.Parameter(t, requires_grad=False))
        self.quant, self.group_size = algo, group_size
        return True

    def _expert(self, x: torch.Tensor, name: str, e: int) -> torch.Tensor:
        """x @ expert e's `name` weight^T, dequantizing as its mode says."""
        w = getattr(self, name)[e]
        if self.quant is None:
            return tf.linear(x, w)
        from tensorrt_llm.quantization import functional as qf

        scale = getattr(self, name + "_scale")[e]
        if self.quant.startswith("FP8"):
            return qf.fp8_linear(x, w, scale, None, None)
        return qf.weight_only_linear(x, w, scale, None, 8 if self.quant == "W8A16" else 4, self.group_size, None)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """Each token's weight per expert, [T, E] float32, zero outside its top k."""
        if self.sigmoid_router:
            return self._sigmoid_routing(x)
        probs = torch.softmax(tf.linear(x, self.router.weight).float(), dim=-1)  # [T, E]
        top, idx = torch.topk(probs, self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter_(1, idx, top)

    def _sigmoid_routing(self, x: torch.Tensor) -> torch.Tensor:
        """DeepSeek-V3's router, as Hugging Face's GLM-4.5 runs it (in float32): sigmoid scores; the choice
        adds the learned bias and keeps the experts of the `topk_groups` best groups (a group scored by its two
        best); the chosen experts weigh their plain scores (renormalised), times routed_scaling_factor."""
        scores = torch.sigmoid(tf.linear(x.float(), self.router.weight.float()))  # [T, E]
        choice = scores + self.score_bias
        T, E = choice.shape
        if self.groups > 1:
            grouped = choice.view(T, self.groups, E // self.groups)  # [T, G, E/G]
            best = torch.topk(grouped.topk(2, dim=-1)[0].sum(-1), self.topk_groups, dim=-1)[1]  # [T, topk_groups]
            keep = torch.zeros(T, self.groups, device=x.device).scatter_(1, best, 1.0).bool()
            choice = choice.masked_fill(~keep.repeat_interleave(E // self.groups, dim=1), 0.0)
        idx = torch.topk(choice, self.top_k, dim=-1)[1]  # [T, k]
        top = scores.gather(1, idx)
        if self.norm_topk_prob:
            top = top / (top.sum(dim=-1, keepdim=True) + 1e-20)
        return torch.zeros_like(scores).scatter_(1, idx, top * self.routed_scaling_factor)

    def _run(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return self._expert(self.act_and_mul(self._expert(x, "gate_up", e)), "down", e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.routing(x)  # [T, E]
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)  # [T, H]
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if x.shape[0] < self.ROUTED_MIN_TOKENS or capturing:
            for e in range(self.gate_up.shape[0]):
                out += weights[:, e : e + 1] * self._run(x, e)
        else:
            tok, exp = weights.nonzero(as_tuple=True)  # [T * top_k] each, token-major
            order = torch.argsort(exp, stable=True)
            tok, exp = tok[order], exp[order]  # grouped by expert
            w = weights[tok, exp].unsqueeze(1)  # [T * top_k, 1]
            counts = torch.bincount(exp, minlength=weights.shape[1]).tolist()  # the host synchronisation
            start = 0
            for e, n in enumerate(counts):
                if n:
                    rows = tok[start : start + n]
                    out.index_add_(0, rows, w[start : start + n] * self._run(x[rows], e))
                start += n
        out = out.to(x.dtype)
        if self.mapping.tp_size > 1:
            dist.all_reduce(out)
        if self.shared_gate is not None:
            out = out + torch.sigmoid(tf.linear(x, self.shared_gate.weight)) * self.shared(x)
        elif self.shared is not None:  # GLM-4.5: added as it is
            out = out + self.shared(x)
        return out
