from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a decoder-only transformer, as the engine stores it (Hugging Face names).

    The fields after `pad_token_id` are the options families differ in; their defaults are Llama's, so
    an engine config written before them reads as the Llama it is."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)
    # A bias on the q/k/v projections only (Qwen2); `attention_bias` puts one on the output projection too.
    qkv_bias: bool = False
    # Sliding-window attention: a query sees the last `sliding_window` keys, itself included (Hugging
    # Face's `kv_idx > q_idx - sliding_window`), on the layers `layer_types` marks "sliding_attention",
    # or on every layer when `layer_types` is None.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    # RMSNorm over head_dim of each q and k head before rotary (Qwen3).
    qk_norm: bool = False
    # Gemma's RMSNorm weighting: (1 + weight), in float32.
    norm_unit_offset: bool = False
    # Gemma scales the token embeddings by sqrt(hidden_size); conversion folds this into the engine's
    # embedding table (rounded in the engine dtype, as Hugging Face rounds the product), so no step pays it.
    embedding_multiplier: float = 1.0
    # Gemma-2: scores scaled by query_pre_attn_scalar ** -0.5 (not head_dim's) and soft-capped,
    # c * tanh(x / c), with attn_logit_softcapping; logits soft-capped with final_logit_softcapping; each
    # attention and MLP output normed again before its residual add (`sandwich_norm`).
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sandwich_norm: bool = False
    # Granite: each block's output times `residual_multiplier` before it joins the residual stream, scores
    # scaled by `attention_multiplier` (not head_dim ** -0.5) and logits divided by `logits_scaling` (its
    # embeddings are scaled by `embedding_multiplier`, as Gemma's).
    # OLMo-2: a norm on each block's output only, none on its input (h + norm(attn(h)), then + norm(mlp(h))),
    # and with qk_norm, q and k normed over the whole projection (every head at once) rather than per head.
    post_block_norms: bool = False
    qk_norm_full: bool = False
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # Mixture of experts (Mixtral, Qwen3-MoE): `num_experts` gated MLPs of `moe_intermediate_size` each
    # (`intermediate_size` when None), the `num_experts_per_tok` most probable running per token, weighted
    # by their router probabilities (renormalised over the chosen ones with `norm_topk_prob`); the layers in
    # `dense_layers` keep a dense MLP of `intermediate_size`. 0 experts: dense everywhere.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    dense_layers: tuple[int, ...] = ()
    # Qwen2-MoE: a shared expert (a gated MLP of this size) on every token of an experts layer, its output
    # weighted by sigmoid(shared_gate(x)) and added to the routed experts'. 0: none.
    shared_expert_intermediate_size: int = 0
    # GLM-4.5 (DeepSeek-V3's router): `moe_router` "sigmoid": sigmoid scores, the top k chosen on score + a
    # learned bias (within the `moe_topk_groups` best of `moe_groups` expert groups) but weighted by the
    # scores alone, times `routed_scaling_factor`; "softmax": Mixtral's. `shared_expert_gated` false: the
    # shared expert's output is added as it is (no sigmoid gate).
    moe_router: str = "softmax"
    routed_scaling_factor: float = 1.0
    moe_groups: int = 1
    moe_topk_groups: int = 1
    shared_expert_gated: bool = True
    # GPT-2 and GPT-BigCode (StarCoder): LayerNorm with bias (`norm_type` "layer", eps `rms_norm_eps`),
    # a learned absolute position table added to the embeddings instead of rotary (`position_embedding`
    # "learned"), and a plain MLP act(fc(x)) -> proj with biases (`mlp_type` "plain").
    norm_type: str = "rms"
    position_embedding: str = "rope"
    mlp_type: str = "gated"
    # GPT-NeoX: rotary on the first `rotary_dim` of each head only (rotate-half within them; the engine's
    # q/k rows are permuted at conversion so that the kernel's rotate-half over head_dim computes it), and
    # attention and MLP side by side on the same input (`parallel_residual`: h + attn(ln1 h) + mlp(ln2 h)).
    rotary_dim: int | None = None
    parallel_residual: bool = False
    # GPT-J and Falcon-7B: in parallel blocks, one norm feeds both attention and MLP (no post_layernorm).
    parallel_shared_norm: bool = False
    # GPT-J: a bias on the head.
    lm_head_bias: bool = False
    # Attention sinks (StreamingLLM; TensorRT-LLM's `sink_token_length`), a load-time option like the window
    # (`with_attention_sinks`): on every windowed layer the first `sink_tokens` keys of the sequence stay
    # visible too, so a query at p sees keys [0, sink_tokens) U (p - window, p]; full layers see all anyway.
    # Positions are not re-indexed (rotary as without sinks). 0: none.
    sink_tokens: int = 0
    # BLOOM and MPT: ALiBi (`position_embedding` "alibi": no rotary, scores + slope_h * (k_pos - q_pos), the
    # slopes of Hugging Face's build_alibi_tensor), a LayerNorm of the token embeddings (`embedding_layernorm`,
    # BLOOM) and LayerNorms without bias (`norm_bias` false, MPT).
    embedding_layernorm: bool = False
    norm_bias: bool = True
    # Gemma-3: the layers in `local_rope_layers` (its sliding-window ones) rotate with base `local_rope_theta`
    # and no scaling; the others with `rope_theta` and `rope_scaling`. None: one rotary for every layer.
    local_rope_theta: float | None = None
    local_rope_layers: tuple[int, ...] = ()
    # SmolLM3, Cohere-2: layers without any position encoding (NoPE: no rotary on their q and k).
    nope_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"model config: sliding_window must be positive or None, got {self.sliding_window}")
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))  # a JSON list on reading
        object.__setattr__(self, "local_rope_layers", tuple(self.local_rope_layers))
        object.__setattr__(self, "nope_layers", tuple(self.nope_layers))
        if not all(0 <= i < self.num_hidden_layers for i in self.nope_layers):
            raise ValueError(f"model config: nope_layers {list(self.nope_layers)} must be layer indices")
        if self.residual_multiplier != 1.0 and (self.parallel_residual or self.sandwich_norm):
            raise ValueError("model config: residual_multiplier is for sequential blocks without sandwich norms")
        if self.local_rope_layers and (
            self.local_rope_theta is None or not all(0 <= i < self.num_hidden_layers for i in self.local_rope_layers)
        ):
            raise ValueError(
                f"model config: local_rope_layers {list(self.local_rope_layers)} need a local_rope_theta and "
                f"layer indices below {self.num_hidden_layers}"
            )
        for name, allowed in (("norm_type", ("rms", "layer")), ("position_embedding", ("rope", "learned", "alibi")),
                              ("mlp_type", ("gated", "plain"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"model config: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.moe_router not in ("softmax", "sigmoid"):
            raise ValueError(f"model config: moe_router must be softmax or sigmoid, got {self.moe_router!r}")
        if self.num_experts and (
            self.num_experts % self.moe_groups or not 1 <= self.moe_topk_groups <= self.moe_groups
        ):
            raise ValueError(
                f"model config: {self.num_experts} experts in {self.moe_groups} groups, {self.moe_topk_groups} chosen"
            )
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"model config: num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 and "
                f"num_experts ({self.num_experts})"
            )
        if self.rotary_dim is not None and not (0 < self.rotary_dim < self.head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"model config: rotary_dim must be even and below head_dim, got {self.rotary_dim}")
        if self.sink_tokens < 0:
            raise ValueError(f"model config: sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.sink_tokens and not self.sink_tokens < (self.sliding_window or 0):
            raise ValueError(
                f"model config: {self.sink_tokens} sink tokens need a longer attention window, got "
                f"sliding_window {self.sliding_window}"
            )
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))  # a JSON list on reading
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(
                    f"model config: layer_types must name one of {LAYER_TYPES} for each of the "
                    f"{self.num_hidden_layers} layers, got {list(self.layer_types)}"
                )

    @cached_property  # read per sequence per step (a frozen dataclass keeps it in its __dict__ all the same)
    def longrope_from(self) -> int | None:
        """LongRoPE (Phi-3 long-context): the original context length; a sequence longer than it is rotated
        with the long factors, every token of it. None for any other positions."""
        from tensorrt_llm.kernels.rotary import longrope_original_length

        return longrope_original_length(self.rope_scaling) if self.position_embedding == "rope" else None

    def rope_offset(self, num_tokens: int) -> int:
        """What a step adds to the positions of a sequence of `num_tokens` tokens (all it has, computed or not,
        this step's included) to pick its rotary table rows: with LongRoPE, a sequence longer than the original
        context reads the long factors' rows, from row max_position_embeddings on; 0 otherwise. Its KV must
        then have been computed the same way: a sequence that grows past the original context is computed
        again (as Hugging Face's `generate` does)."""
        original = self.longrope_from
        return self.max_position_embeddings if original is not None and num_tokens > original else 0

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    def with_attention_window(self, window: int) -> "ModelConfig":
        """This model with every layer attending to at most the last `window` keys (TensorRT-LLM's
        `max_attention_window_size`); a layer's own narrower window stays."""
        if window < 1:
            raise ValueError(f"attention window must be positive, got {window}")
        if self.layer_types is not None and window > (self.sliding_window or 0):
            raise ValueError(
                f"an attention window of {window} over a model whose layers differ ({self.sliding_window}-key "
                "windows and full layers) would give the full layers a window the others do not have: not supported"
            )
        return replace(self, sliding_window=min(window, self.sliding_window or window), layer_types=None)

    def attention_window(self, layer: int) -> int:
        """Keys a query of `layer` attends to, itself included; 0: all of them (full causal attention)."""
        if self.sliding_window is None:
            return 0
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return 0
        return self.sliding_window

    def with_attention_sinks(self, sinks: int) -> "ModelConfig":
        """This model with the first `sinks` keys visible to every query of its windowed layers as well
        (TensorRT-LLM's `sink_token_length`, StreamingLLM): the window is applied first (a family's own, or
        `with_attention_window`'s). Sinks are only asked for, never a family's default."""
        if sinks < 1:
            raise ValueError(f"sink tokens must be positive, got {sinks}")
        if not any(self.attention_window(i) for i in range(self.num_hidden_layers)):
            raise ValueError(
                f"{sinks} sink tokens (sink_token_length) need an attention window (max_attention_window_size), "
                "and this model's layers attend to every key"
            )
        if sinks >= self.sliding_window:
            raise ValueError(f"sink tokens ({sinks}) must be fewer than the attention window ({self.sliding_window})")
        return replace(self, sink_tokens=sinks)

    def attention_sinks(self, layer: int) -> int:
        """Sink keys a query of `layer` sees besides its window (0 on a full layer: it sees every key)."""
        return self.sink_tokens if self.attention_window(layer) else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown fields {sorted(unknown)}")
        return cls(**d)
