"""Every registered family against Hugging Face's own forward pass and `generate` on the same tiny random
model: prompt and step logits, a mixed step, and greedy tokens of a packed, paged batch through
ModelRunner. Llama itself: test_llama_vs_hf.py; tensor parallel: test_tensor_parallel.py."""

import pytest
import torch

from tensorrt_llm.models import MODEL_REGISTRY, get_family
from tensorrt_llm.runtime import Engine, ModelRunner, build_step_input
from tests.helpers import build_engine, make_tiny_model


def _longrope(pairs: int) -> dict:
    """LongRoPE scaling over `pairs` rotated dim pairs: short and long factors that differ per pair."""
    return dict(type="longrope", short_factor=[1.0 + 0.1 * i for i in range(pairs)],
                long_factor=[1.5 + 0.75 * i for i in range(pairs)])  # fmt: skip


# name: (architecture, tiny-config overrides). Windows of 12 keys are shorter than the prompts (up to 30
# tokens) and the generations, and not a multiple of the 8-token KV blocks.
FAMILIES = {
    "mistral": ("MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=12)),
    # layer 0 full, layer 1 windowed; biases on q/k/v
    "qwen2": (
        "Qwen2ForCausalLM",
        dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=12, max_window_layers=1),
    ),
    # Qwen2.5 with YaRN (its 128k setting): frequencies interpolated below the original context's, cos and sin
    # scaled
    "qwen2_yarn": (
        "Qwen2ForCausalLM",
        dict(
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
        ),
    ),  # fmt: skip
    # head_dim 32 != hidden / heads; QK-norm; tied head
    "qwen3": ("Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
    # GeLU-tanh, (1 + w) norms, scaled embeddings, tied head, MQA
    "gemma": ("GemmaForCausalLM", dict(num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)),
    # fused qkv_proj / gate_up_proj, windowed
    "phi3": ("Phi3ForCausalLM", dict(num_key_value_heads=2, sliding_window=12)),
    # long context (Phi-3-mini-128k, Phi-3.5): LongRoPE over an original context of 16 tokens, which the tests'
    # prompts (5 to 30 tokens) and generations cross both ways: a longer prompt takes the long factors
    # throughout, a shorter one is recomputed with them when it grows past 16 (as Hugging Face's generate)
    "phi3_longrope": (
        "Phi3ForCausalLM",
        dict(
            num_key_value_heads=2,
            max_position_embeddings=256,
            original_max_position_embeddings=16,
            rope_scaling=_longrope(8),
        ),
    ),  # fmt: skip
    # Phi-4-mini: rotary over 3/4 of each head (12 of 16 dims), LongRoPE on them, tied head
    "phi4_mini": (
        "Phi3ForCausalLM",
        dict(
            num_key_value_heads=2,
            partial_rotary_factor=0.75,
            tie_word_embeddings=True,
            max_position_embeddings=256,
            original_max_position_embeddings=16,
            rope_scaling=_longrope(6),
        ),
    ),  # fmt: skip
    # mixture of experts: 4 experts, top 2, renormalised; windowed
    "mixtral": (
        "MixtralForCausalLM",
        dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=12),
    ),
    # experts of their own size, top-2 probabilities not renormalised, layer 1 dense; QK-norm
    "qwen3_moe": (
        "Qwen3MoeForCausalLM",
        dict(
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=48,
            norm_topk_prob=False,
            mlp_only_layers=[1],
        ),
    ),  # fmt: skip
    # routed experts plus a sigmoid-gated shared expert; q/k/v biases; layer 0 dense
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        dict(
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=96,
            norm_topk_prob=True,
            mlp_only_layers=[0],
        ),
    ),  # fmt: skip
    # LayerNorm, learned positions, GeLU-tanh MLP with biases, Conv1D weights, tied head
    "gpt2": ("GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)),
    # GPT-2's, with Linear weights and one K/V head (multi_query)
    "gpt_bigcode": ("GPTBigCodeForCausalLM", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, multi_query=True)),
    # ReLU, separate q/k/v, positions 2 rows into the table
    "opt": ("OPTForCausalLM", dict(ffn_dim=128, word_embed_proj_dim=64)),
    # rotary on a quarter of each head, attention and MLP in parallel, untied head, exact GeLU
    "gpt_neox": ("GPTNeoXForCausalLM", dict(rotary_pct=0.25, use_parallel_residual=True)),
    # Llama's layout with biases, LayerNorm, plain GeLU-tanh MLP, GQA, windowed, tied head
    "starcoder2": (
        "Starcoder2ForCausalLM",
        dict(num_key_value_heads=2, sliding_window=12, max_position_embeddings=512),
    ),
    # interleaved rotary on a quarter of each head, attention and MLP in parallel on one norm, biased head
    "gptj": ("GPTJForCausalLM", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, rotary_dim=4)),
    # Falcon-7B's layout: multi-query, attention and MLP in parallel on one norm
    "falcon": ("FalconForCausalLM", dict(multi_query=True, parallel_attn=True, new_decoder_architecture=False)),
    # the 40B / 180B layout: grouped K/V (2 heads), one norm each for attention and MLP
    "falcon_new": ("FalconForCausalLM", dict(new_decoder_architecture=True, num_kv_heads=2)),
    # q/k/v biases, fused gate_up_proj, interleaved rotary on half of each head
    "glm": ("GlmForCausalLM", dict(num_key_value_heads=2, head_dim=16)),
    # GLM's, with norms after attention and after the MLP
    "glm4": ("Glm4ForCausalLM", dict(num_key_value_heads=2, head_dim=16)),
    # ALiBi with 6 heads (not a power of two: the extra slopes; 3 a rank with TP2), LayerNorm on the
    # embeddings, q | k | v interleaved per head, GeLU-tanh MLP with biases, tied head
    "bloom": ("BloomForCausalLM", dict(hidden_size=96, num_attention_heads=6, tie_word_embeddings=True)),
    # ALiBi, LayerNorm without bias, fused Wqkv, exact GeLU, no biases, tied head
    "mpt": ("MptForCausalLM", dict(tie_word_embeddings=True)),
    # windowed and full layers alternating, soft-capped scores (caps low enough to bite) and logits,
    # sandwich norms, query_pre_attn_scalar != head_dim
    "gemma2": (
        "Gemma2ForCausalLM",
        dict(
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
            sliding_window=12,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),  # fmt: skip
    # Gemma-3: five windowed layers to one full (here layer 2 of 3), (1 + w) q/k norms, a rotary per layer
    # type (the full layer's linearly scaled), no soft-capping
    "gemma3": (
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=12,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            },
        ),
    ),  # fmt: skip
    # Granite: embedding, residual and attention multipliers, logits divided; tied head
    "granite": (
        "GraniteForCausalLM",
        dict(
            num_key_value_heads=2,
            embedding_multiplier=6.0,
            residual_multiplier=0.3,
            attention_multiplier=0.2,
            logits_scaling=4.0,
            tie_word_embeddings=True,
        ),
    ),  # fmt: skip
    # SmolLM3: no position encoding on layer 1 of 4 (its every fourth layer in the released models)
    "smollm3": ("SmolLM3ForCausalLM", dict(num_key_value_heads=2, num_hidden_layers=4, no_rope_layers=[1, 0, 1, 1])),
    # Command R: LayerNorm without bias, attention and MLP in parallel on one norm, interleaved rotary, logits
    # scaled, tied head
    "cohere": ("CohereForCausalLM", dict(num_key_value_heads=2, logit_scale=0.25)),
    # Command R7B / A: Cohere's, with three windowed layers to one full, the full ones without rotary
    "cohere2": (
        "Cohere2ForCausalLM",
        dict(
            num_key_value_heads=2,
            num_hidden_layers=4,
            sliding_window=12,
            logit_scale=0.25,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        ),
    ),  # fmt: skip
    # OLMo-2: norms on the blocks' outputs only, q and k normed over the whole projection (MHA: TP splits it)
    "olmo2": ("Olmo2ForCausalLM", dict()),
    # GLM-4.5: DeepSeek-V3's router (sigmoid, a learned choice bias, 4 experts in 2 groups with 1 kept here),
    # an ungated shared expert, layer 0 dense, q/k/v biases, q/k norms, rotary on half of each head
    "glm4_moe": (
        "Glm4MoeForCausalLM",
        dict(
            num_key_value_heads=2,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=48,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            attention_bias=True,
            use_qk_norm=True,
            num_hidden_layers=3,
        ),
    ),  # fmt: skip
}
VOCAB = 384


def make_family_model(name: str, out_dir):
    arch, overrides = FAMILIES[name]
    # norm weights perturbed too, so that (1 + w) against w and the QK-norm weights are checked
    model = make_tiny_model(out_dir, arch, with_tokenizer=False, vocab_size=VOCAB, norm_std=0.2, **overrides)
    biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    if biases:  # a router's choice bias (GLM-4.5), zeros when made: random, so that it changes the choice
        with torch.no_grad():
            for b in biases:
                b.normal_(0, 0.3)
        model.save_pretrained(out_dir)
    # The oracle is the eager attention: on CUDA transformers (5.17) picks SDPA for Gemma-2, which drops
    # the attention soft-capping without a word (seen on the H200: 1.7e-2 off, 1.2e-3 with eager).
    model.set_attn_implementation("eager")
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    hf = make_family_model(request.param, d / "hf")
    build_engine(d / "hf", d / "engine", max_batch_size=8, max_num_tokens=512)
    return hf, d / "engine"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_every_family_is_registered_and_tested():
    # Llama: test_llama_vs_hf.py; the vision-language checkpoints' language models: below
    tested_apart = {"LlamaForCausalLM", *VISION_LANGUAGE}
    assert {arch for arch, _ in FAMILIES.values()} | tested_apart == set(MODEL_REGISTRY)


VISION_LANGUAGE = [
    "Gemma3ForConditionalGeneration",
    "Mistral3ForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
]


@pytest.mark.parametrize("arch", VISION_LANGUAGE)
def test_vision_language_checkpoints_language_model_matches_hf(tmp_path, arch):
    """Gemma-3 4B-27B, Mistral-Small-3.x, Qwen2-VL and Qwen2.5-VL checkpoints: their language model, built
    alone from the checkpoint, gives the whole model's text-only logits and greedy tokens."""
    import json

    import transformers

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                max_position_embeddings=512)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)  # fmt: skip
    tokens = dict(image_token_index=VOCAB - 1)
    if arch.startswith("Gemma3"):
        text |= FAMILIES["gemma3"][1]
        extra = dict(mm_tokens_per_image=4, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)
    elif arch.startswith("Mistral3"):
        text |= dict(num_hidden_layers=2, num_key_value_heads=2, head_dim=16, sliding_window=None)
        vision |= dict(head_dim=16)
        extra = dict(tie_word_embeddings=False)  # Mistral-Small's own head: `language_model.lm_head.weight`
    else:  # Qwen: q/k/v biases, its multimodal rotary, an untied head
        mrope = {"type": "mrope", "mrope_section": [2, 3, 3]}
        text |= dict(num_hidden_layers=2, num_key_value_heads=2, rope_scaling=mrope, bos_token_id=1, eos_token_id=2)
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, embed_dim=32)
        extra = dict(tie_word_embeddings=False, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3)
        tokens = dict(image_token_id=VOCAB - 1)
    config_cls = getattr(transformers, arch.replace("ForConditionalGeneration", "Config"))
    config = config_cls(text_config=text, vision_config=vision, **tokens, **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # the norms' weights perturbed: (1 + w) against w is checked
        for name, p in hf.named_parameters():
            if "language_model" in name and name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    if arch.startswith("Qwen2_5"):  # the released files' layout: the text fields at the top, no text_config
        path = tmp_path / "hf" / "config.json"
        saved = json.loads(path.read_text())
        text_config = saved.pop("text_config")
        text_config.pop("rope_parameters", None)
        path.write_text(json.dumps({**text_config, **saved, "rope_scaling": text["rope_scaling"], "rope_theta": 1e6}))
    build_engine(tmp_path / "hf", tmp_path / "engine", max_batch_size=8, max_num_tokens=512)
    engine = Engine.from_dir(tmp_path / "engine", device="cpu")
    prompt = torch.randint(4, VOCAB - 4, (21,)).tolist()
    kv = engine.make_kv_cache(8)
    ours = engine.forward(build_step_input([prompt], [0], [list(range(3))], 8, all_logits=True), kv)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([prompt])).logits[0]
    assert _rel_err(ours, ref) <= 1e-4
    out = ModelRunner.from_dir(tmp_path / "engine", device="cpu").generate([prompt], max_new_tokens=16, end_id=-1)
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert out[0, 0, : want.shape[1]].tolist() == want[0].tolist()


def test_prompt_and_step_logits_match_hf(built):
    hf, engine_dir = built
    engine = Engine.from_dir(engine_dir, device="cpu")
    kv = engine.make_kv_cache(16)
    tpb = engine.config.build.tokens_per_block
    torch.manual_seed(1)
    prompt = torch.randint(4, VOCAB, (21,)).tolist()
    blocks = list(range(5))  # 40 slots: prompt + steps
    step = build_step_input(
        [prompt], [0], [blocks], tpb, all_logits=True, rope_offsets=[engine.config.model.rope_offset(21)]
    )
    ours = engine.forward(step, kv)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    assert _rel_err(ours, ref) <= 1e-4
    seq = list(prompt)
    for _ in range(8):
        seq.append(int(ours[-1].argmax()))
        step = build_step_input(
            [seq[-1:]], [len(seq) - 1], [blocks], tpb, rope_offsets=[engine.config.model.rope_offset(len(seq))]
        )
        ours = engine.forward(step, kv)
        with torch.no_grad():
            ref = hf(torch.tensor([seq])).logits[0, -1:]
        assert _rel_err(ours, ref) <= 1e-4


def test_mixed_context_and_generation_step(built):
    hf, engine_dir = built
    engine = Engine.from_dir(engine_dir, device="cpu")
    kv = engine.make_kv_cache(32)
    tpb = engine.config.build.tokens_per_block
    torch.manual_seed(3)
    a = torch.randint(4, VOCAB, (19,)).tolist()
    b = torch.randint(4, VOCAB, (6,)).tolist()
    off = engine.config.model.rope_offset
    engine.forward(build_step_input([a], [0], [[0, 1, 2]], tpb, rope_offsets=[off(19)]), kv)
    mixed = engine.forward(
        build_step_input([[7], b], [19, 0], [[0, 1, 2], [10, 11]], tpb, rope_offsets=[off(20), off(6)]), kv
    )
    with torch.no_grad():
        ref_a = hf(torch.tensor([a + [7]])).logits[0, -1]
        ref_b = hf(torch.tensor([b])).logits[0, -1]
    assert _rel_err(mixed[0], ref_a) <= 1e-4
    assert _rel_err(mixed[1], ref_b) <= 1e-4


def test_greedy_generate_batch_matches_hf(built):
    hf, engine_dir = built
    runner = ModelRunner.from_dir(engine_dir, device="cpu")
    torch.manual_seed(2)
    prompts = [torch.randint(4, VOCAB, (n,)).tolist() for n in (5, 17, 9, 30)]
    out = runner.generate(prompts, max_new_tokens=24, end_id=-1, pad_id=0, return_dict=True)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
        n = int(out["sequence_lengths"][i, 0])
        assert out["output_ids"][i, 0, :n].tolist() == ref[0].tolist()


def test_config_options_read_from_hf(tmp_path):
    """What each family reads off config.json, including the layouts of checkpoints saved before
    transformers 5, and what it refuses."""
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    qwen2 = get_family("Qwen2ForCausalLM").config_from_hf
    # Qwen2.5 checkpoints: a sliding_window value, but use_sliding_window false: no window
    cfg = qwen2(dict(base, sliding_window=131072, use_sliding_window=False, max_window_layers=28))
    assert cfg.sliding_window is None and cfg.qkv_bias and not cfg.attention_bias
    # no layer_types (transformers 4): windows from max_window_layers on
    cfg = qwen2(dict(base, sliding_window=16, use_sliding_window=True, max_window_layers=2))
    assert [cfg.attention_window(i) for i in range(4)] == [0, 0, 16, 16]
    # YaRN without its original length: Hugging Face takes max_position_embeddings (then the factor is the one given)
    cfg = qwen2(dict(base, max_position_embeddings=32768, rope_scaling=dict(type="yarn", factor=4.0)))
    assert cfg.rope_scaling["original_max_position_embeddings"] == 32768 and cfg.rope_scaling["factor"] == 4.0
    # a window covering every position changes nothing: dropped, so the plain kernels run
    mistral = get_family("MistralForCausalLM").config_from_hf
    assert mistral(dict(base, sliding_window=4096, max_position_embeddings=4096)).sliding_window is None
    assert mistral(dict(base, sliding_window=None)).sliding_window is None
    gemma = get_family("GemmaForCausalLM").config_from_hf(dict(base, hidden_act="gelu"))  # the first Gemma configs
    assert gemma.hidden_act == "gelu_pytorch_tanh" and gemma.tie_word_embeddings and gemma.norm_unit_offset
    assert gemma.embedding_multiplier == 8.0
    phi3 = get_family("Phi3ForCausalLM").config_from_hf
    # the first long-context configs: "su", and the original context length beside rope_scaling
    factors = dict(short_factor=[1.0] * 8, long_factor=[2.0] * 8)
    cfg = phi3(dict(base, original_max_position_embeddings=4096, rope_scaling=dict(type="su", **factors)))
    assert cfg.rope_scaling["original_max_position_embeddings"] == 4096
    with pytest.raises(ValueError, match="needs original_max_position_embeddings"):
        phi3(dict(base, rope_scaling=dict(type="longrope", **factors)))
    short = dict(type="longrope", short_factor=[1.0] * 4, long_factor=[1.0] * 4)
    with pytest.raises(ValueError, match="longrope factors: 4 given"):
        phi3(dict(base, original_max_position_embeddings=64, rope_scaling=short))
    assert phi3(dict(base, partial_rotary_factor=0.75)).rotary_dim == 12  # Phi-4-mini: 3/4 of 16 dims
    # Gemma-3 as transformers 4 saved it (the released checkpoints): a layer pattern, the local base beside
    gemma3 = get_family("Gemma3ForCausalLM").config_from_hf
    g3 = dict(base, num_hidden_layers=12, head_dim=16, sliding_window=512, max_position_embeddings=32768)
    cfg = gemma3(dict(g3, sliding_window_pattern=6, rope_theta=1e6, rope_local_base_freq=1e4,
                      rope_scaling=dict(rope_type="linear", factor=8.0)))  # fmt: skip
    assert cfg.local_rope_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10) and cfg.local_rope_theta == 1e4
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling["factor"] == 8.0 and cfg.qk_norm and cfg.norm_unit_offset
    assert [cfg.attention_window(i) for i in (0, 5, 11)] == [512, 0, 0]
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        gemma3(dict(g3, use_bidirectional_attention=True))
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        get_family("LlamaForCausalLM").config_from_hf(dict(base, hidden_act="relu"))
    # BLOOM's first configs (n_embed, n_head, n_layer); MPT's refusals
    bloom = get_family("BloomForCausalLM").config_from_hf(dict(vocab_size=VOCAB, n_embed=64, n_head=4, n_layer=2))
    assert bloom.position_embedding == "alibi" and bloom.embedding_layernorm and bloom.tie_word_embeddings
    assert bloom.hidden_size == 64 and bloom.intermediate_size == 256 and bloom.hidden_act == "gelu_new"
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm"):
        get_family("BloomForCausalLM").config_from_hf(
            dict(vocab_size=VOCAB, n_embed=64, n_head=4, n_layer=2, apply_residual_connection_post_layernorm=True)
        )
    mpt = get_family("MptForCausalLM").config_from_hf
    mpt_base = dict(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=2, max_seq_len=256)
    cfg = mpt(mpt_base)
    assert cfg.position_embedding == "alibi" and not cfg.norm_bias and not cfg.attention_bias and not cfg.mlp_bias
    assert cfg.max_position_embeddings == 256 and cfg.hidden_act == "gelu"
    for attn in (dict(clip_qkv=8.0), dict(qk_ln=True), dict(softmax_scale=0.5), dict(alibi_bias_max=16)):
        with pytest.raises(ValueError, match=next(iter(attn))):
            mpt(dict(mpt_base, attn_config=attn))
    with pytest.raises(ValueError, match="no_bias"):
        mpt(dict(mpt_base, no_bias=False))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_random_weight_build_from_config_alone(tmp_path, name):
    """`trtllm-build --model_config` (benchmarks): random weights in each family's checkpoint layout."""
    from tensorrt_llm.builder import BuildConfig
    from tensorrt_llm.builder import build_engine as build_from_config
    from tensorrt_llm.tools.tiny_model import tiny_config

    arch, overrides = FAMILIES[name]
    hf = dict(tiny_config(arch, VOCAB, **overrides).to_dict(), architectures=[arch])
    build = BuildConfig(max_batch_size=2, max_input_len=32, max_seq_len=64, tokens_per_block=8)
    build_from_config(tmp_path, hf_config=hf, dtype="float32", build=build)
    engine = Engine.from_dir(tmp_path, device="cpu")
    logits = engine.forward(build_step_input([[5, 6, 7]], [0], [[0]], 8), engine.make_kv_cache(4))
    assert logits.shape == (1, VOCAB) and logits.isfinite().all()


@pytest.mark.parametrize("name", [n for n, (arch, _) in FAMILIES.items() if "Moe" in arch or "Mixtral" in arch])
def test_moe_routed_path_matches_hf(tmp_path, monkeypatch, name):
    """Steps of at least ROUTED_MIN_TOKENS run each expert on its own tokens only: prompts and a mixed step
    still match Hugging Face (the small model's prompts are made to take that path)."""
    from tensorrt_llm.layers.moe import MoeMLP

    monkeypatch.setattr(MoeMLP, "ROUTED_MIN_TOKENS", 4)
    hf = make_family_model(name, tmp_path / "hf")
    build_engine(tmp_path / "hf", tmp_path / "engine", max_batch_size=8, max_num_tokens=512)
    engine = Engine.from_dir(tmp_path / "engine", device="cpu")
    kv = engine.make_kv_cache(32)
    tpb = engine.config.build.tokens_per_block
    torch.manual_seed(4)
    a, b = torch.randint(4, VOCAB, (37,)).tolist(), torch.randint(4, VOCAB, (9,)).tolist()
    ours = engine.forward(build_step_input([a], [0], [list(range(5))], tpb, all_logits=True), kv)
    mixed = engine.forward(build_step_input([[7], b], [37, 0], [list(range(5)), [10, 11]], tpb), kv)
    with torch.no_grad():
        ref = hf(torch.tensor([a + [7]])).logits[0]
        ref_b = hf(torch.tensor([b])).logits[0, -1]
    assert _rel_err(ours, ref[:-1]) <= 1e-4
    assert _rel_err(mixed[0], ref[-1]) <= 1e-4 and _rel_err(mixed[1], ref_b) <= 1e-4


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "prefix-reuse"])
def test_longrope_chunked_prompts_and_cached_prefixes_match_hf(tmp_path, reuse):
    """LongRoPE through the batcher's other paths: a prompt longer than the original context computed in
    chunks (each chunk shorter than it still takes the long factors), and prefix reuse between a long prompt
    and a short one that shares its start (their blocks hold differently rotated keys: never exchanged)."""
    from inflight_batcher import Executor, ExecutorConfig, Request

    hf = make_family_model("phi3_longrope", tmp_path / "hf")
    build_engine(tmp_path / "hf", tmp_path / "engine", max_batch_size=8, max_num_tokens=512)
    engine = Engine.from_dir(tmp_path / "engine", device="cpu")
    torch.manual_seed(5)
    long = torch.randint(4, VOCAB, (30,)).tolist()
    prompts = [long, long[:13], long]  # long, then a short one sharing 13 tokens (one full block), then long again
    config = ExecutorConfig(max_num_tokens=8, enable_chunked_context=True, enable_kv_cache_reuse=reuse)
    got, reused = [], []
    with Executor(engine, config) as ex:
        for p in prompts:
            got.append(ex.generate([Request(p, max_new_tokens=12, end_id=-1)])[0].tokens[0])
            reused.append(ex.stats().reused_blocks)
    for p, g in zip(prompts, got, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert list(g) == ref[0, len(p) :].tolist()
    if reuse:
        # The short prompt found none of the long one's blocks at first; grown past 16 tokens and recomputed with
        # the long factors, it took their first block (its same 8 tokens); the long prompt again took 3.
        assert reused == [0, 1, 4]


def test_longrope_refuses_beams_that_would_cross_the_original_context(tmp_path):
    """Growing past the original context means computing a sequence again, which forked beams cannot: a beam
    request that may cross it is refused at once; one that starts past it (or stays short) is served."""
    from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams

    make_family_model("phi3_longrope", tmp_path / "hf")
    build_engine(tmp_path / "hf", tmp_path / "engine", max_batch_size=8, max_beam_width=2)
    engine = Engine.from_dir(tmp_path / "engine", device="cpu")
    beams = SamplingParams(beam_width=2)
    with Executor(engine, ExecutorConfig(max_beam_width=2)) as ex:
        with pytest.raises(ValueError, match="beam search that may grow past LongRoPE's original context"):
            ex.enqueue(Request(list(range(4, 14)), max_new_tokens=8, sampling=beams))
        for prompt, new in ((list(range(4, 24)), 6), (list(range(4, 10)), 6)):  # past 16 from the start; never
            assert ex.generate([Request(prompt, max_new_tokens=new, sampling=beams)])[0].finish_reason == "length"
