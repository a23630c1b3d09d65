"""The engine against Hugging Face's own forward pass and `generate` on the same random weights."""

import dataclasses

import pytest
import torch

from tensorrt_llm.runtime import Engine, ModelRunner, build_step_input
from tests.helpers import build_engine, make_tiny_llama

VARIANTS = {
    "mha_untied": dict(),
    "gqa_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mqa": dict(num_key_value_heads=1),
    "llama3_rope": dict(
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def built(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    hf = make_tiny_llama(d / "hf", with_tokenizer=False, vocab_size=384, **VARIANTS[request.param])
    build_engine(d / "hf", d / "engine", max_batch_size=8, max_num_tokens=512)
    return hf, d / "engine"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_prompt_and_step_logits_match_hf(built):
    hf, engine_dir = built
    engine = Engine.from_dir(engine_dir, device="cpu")
    kv = engine.make_kv_cache(16)
    tpb = engine.config.build.tokens_per_block
    torch.manual_seed(1)
    prompt = torch.randint(4, 384, (21,)).tolist()
    blocks = list(range(6))  # 48 slots: prompt + steps
    # Context phase: logits of every prompt token.
    step = build_step_input([prompt], [0], [blocks], tpb, all_logits=True)
    ours = engine.forward(step, kv)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    assert _rel_err(ours, ref) <= 1e-4
    # Generation phase, token by token against the cache.
    seq = list(prompt)
    for _ in range(8):
        nxt = int(ours[-1].argmax())
        seq.append(nxt)
        ours = engine.forward(build_step_input([[nxt]], [len(seq) - 1], [blocks], tpb), kv)
        with torch.no_grad():
            ref = hf(torch.tensor([seq])).logits[0, -1:]
        assert _rel_err(ours, ref) <= 1e-4


def test_mixed_context_and_generation_step(built):
    """A step packing one prompt (context phase) next to a sequence in its generation phase gives the
    same logits as running each alone."""
    hf, engine_dir = built
    engine = Engine.from_dir(engine_dir, device="cpu")
    kv = engine.make_kv_cache(32)
    tpb = engine.config.build.tokens_per_block
    a = torch.randint(4, 384, (13,)).tolist()
    b = torch.randint(4, 384, (6,)).tolist()
    engine.forward(build_step_input([a], [0], [[0, 1, 2]], tpb), kv)
    mixed = engine.forward(build_step_input([[7], b], [13, 0], [[0, 1, 2], [10, 11]], tpb), kv)
    with torch.no_grad():
        ref_a = hf(torch.tensor([a + [7]])).logits[0, -1]
        ref_b = hf(torch.tensor([b])).logits[0, -1]
    assert _rel_err(mixed[0], ref_a) <= 1e-4
    assert _rel_err(mixed[1], ref_b) <= 1e-4


def test_greedy_generate_matches_hf_single_and_batch(built):
    hf, engine_dir = built
    runner = ModelRunner.from_dir(engine_dir, device="cpu")
    torch.manual_seed(2)
    prompts = [torch.randint(4, 384, (n,)).tolist() for n in (5, 17, 9, 30)]
    refs = []
    for p in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
        refs.append(out[0].tolist())
    # Alone.
    single = runner.generate([prompts[1]], max_new_tokens=32, end_id=-1, pad_id=0, return_dict=True)
    assert single["output_ids"][0, 0, : single["sequence_lengths"][0, 0]].tolist() == refs[1]
    # As one batch of different lengths.
    out = runner.generate(prompts, max_new_tokens=32, end_id=-1, pad_id=0, return_dict=True)
    assert out["output_ids"].shape == (4, 1, 30 + 32)
    for i, ref in enumerate(refs):
        n = int(out["sequence_lengths"][i, 0])
        assert n == len(ref)
        assert out["output_ids"][i, 0, :n].tolist() == ref
        assert (out["output_ids"][i, 0, n:] == 0).all()  # padded with pad_id


def test_penalties_stop_words_and_end_id(built):
    """The host-driven path (penalties) against Hugging Face; end id and stop words end sequences."""
    hf, engine_dir = built
    runner = ModelRunner.from_dir(engine_dir, device="cpu")
    prompt = [1, 20, 30, 40, 50, 20, 30]
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, repetition_penalty=1.3,
            eos_token_id=None, pad_token_id=0,
        )[0].tolist()  # fmt: skip
    out = runner.generate([prompt], max_new_tokens=24, end_id=-1, repetition_penalty=1.3, return_dict=True)
    assert out["output_ids"][0, 0, : out["sequence_lengths"][0, 0]].tolist() == ref
    plain = runner.generate([prompt], max_new_tokens=24, end_id=-1, return_dict=True)
    gen = plain["output_ids"][0, 0, len(prompt) : plain["sequence_lengths"][0, 0]].tolist()
    # The 5th generated token as end id: generation stops there; as in TensorRT-LLM the end id is not
    # part of the output (padding follows).
    cut = runner.generate([prompt], max_new_tokens=24, end_id=gen[4], pad_id=0, return_dict=True)
    n = int(cut["sequence_lengths"][0, 0])
    assert cut["output_ids"][0, 0, :n].tolist() == prompt + gen[: gen.index(gen[4])]
    assert (cut["output_ids"][0, 0, n:] == 0).all()
    stop = runner.generate([prompt], max_new_tokens=24, end_id=-1, stop_words_list=[gen[6:8]], return_dict=True)
    n = int(stop["sequence_lengths"][0, 0])
    assert stop["output_ids"][0, 0, len(prompt) : n].tolist()[-2:] == gen[6:8]
    assert n <= len(prompt) + 8


def test_every_eos_id_of_the_checkpoint_ends_a_sequence(built):
    _, engine_dir = built
    runner = ModelRunner.from_dir(engine_dir, device="cpu")
    prompt = [1, 20, 30, 40, 50, 20, 30]
    free = runner.generate([prompt], max_new_tokens=12, end_id=-1, return_dict=True)
    gen = free["output_ids"][0, 0, len(prompt) : free["sequence_lengths"][0, 0]].tolist()
    other = runner.vocab_size - 1 if gen[3] != runner.vocab_size - 1 else 0
    model = dataclasses.replace(runner.config.model, eos_token_id=[other, gen[3]])  # a second eos id
    runner.config = dataclasses.replace(runner.config, model=model)
    out = runner.generate([prompt], max_new_tokens=12, return_dict=True)  # end_id from the checkpoint
    n = int(out["sequence_lengths"][0, 0])
    assert out["output_ids"][0, 0, len(prompt) : n].tolist() == gen[: gen.index(gen[3])]


def test_max_attention_window_size_is_mistrals_sliding_window(built):
    """A Llama engine loaded with `attention_window` W (max_attention_window_size) computes what Hugging
    Face's Mistral computes with the same weights and sliding_window W; a window covering max_seq_len is none."""
    from transformers import MistralConfig, MistralForCausalLM

    hf, engine_dir = built
    window = 12
    cfg = {k: v for k, v in hf.config.to_dict().items() if k not in ("model_type", "architectures")}
    mistral = MistralForCausalLM(MistralConfig(**{**cfg, "sliding_window": window})).eval()
    mistral.load_state_dict(hf.state_dict())
    mistral.set_attn_implementation("eager")
    engine = Engine.from_dir(engine_dir, device="cpu", attention_window=window)
    assert engine.config.model.sliding_window == window
    assert Engine.from_dir(engine_dir, device="cpu", attention_window=100000).config.model.sliding_window is None
    kv = engine.make_kv_cache(16)
    torch.manual_seed(4)
    prompt = torch.randint(4, 384, (29,)).tolist()
    ours = engine.forward(build_step_input([prompt], [0], [list(range(8))], 8, all_logits=True), kv)
    with torch.no_grad():
        ref = mistral(torch.tensor([prompt])).logits[0]
        full = hf(torch.tensor([prompt])).logits[0]
    assert _rel_err(ours, ref) <= 1e-4
    assert _rel_err(ours[window:], full[window:]) > 1e-2  # the window changed something


def _sink_mask(n: int, window: int, sinks: int) -> torch.Tensor:
    """Additive [1, 1, n, n] mask: query p sees keys [0, sinks) U (p - window, p]."""
    i = torch.arange(n)
    keep = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - window) | (i[None, :] < sinks))
    return torch.zeros(1, 1, n, n).masked_fill(~keep, torch.finfo(torch.float32).min)


def test_sink_tokens_are_hugging_faces_forward_with_a_sink_mask(built, request):
    """A Llama engine loaded with `attention_window` W and `sink_tokens` S (sink_token_length) computes what
    Hugging Face's forward computes on the same weights with a mask of keys [0, S) U (p - W, p] and the
    positions unchanged: the prompt's logits, then generation steps against the paged cache."""
    if request.node.callspec.params["built"] != "gqa_tied":
        pytest.skip("the plumbing is the same for every variant: one is enough")
    hf, engine_dir = built
    window, sinks = 12, 5
    engine = Engine.from_dir(engine_dir, device="cpu", attention_window=window, sink_tokens=sinks)
    m = engine.config.model
    assert (m.sliding_window, m.sink_tokens, m.attention_sinks(0)) == (window, sinks, sinks)
    kv, tpb = engine.make_kv_cache(16), engine.config.build.tokens_per_block
    blocks = list(range(8))
    torch.manual_seed(4)
    seq = torch.randint(4, 384, (29,)).tolist()
    logits = [engine.forward(build_step_input([seq], [0], [blocks], tpb, all_logits=True), kv)]
    for _ in range(6):
        seq.append(int(logits[-1][-1].argmax()))
        logits.append(engine.forward(build_step_input([[seq[-1]]], [len(seq) - 1], [blocks], tpb), kv))
    ours = torch.cat(logits)  # every position of the 35 tokens
    with torch.no_grad():
        ref = hf(torch.tensor([seq]), attention_mask=_sink_mask(len(seq), window, sinks)).logits[0]
        no_sinks = hf(torch.tensor([seq]), attention_mask=_sink_mask(len(seq), window, 0)).logits[0]
    assert _rel_err(ours, ref) <= 1e-4
    assert _rel_err(ours[window:], no_sinks[window:]) > 1e-2  # the sinks changed something


def test_sink_tokens_need_a_window_longer_than_them(built, request):
    if request.node.callspec.params["built"] != "gqa_tied":
        pytest.skip("one variant is enough")
    _, engine_dir = built
    with pytest.raises(ValueError, match="fewer than the attention window"):
        Engine.from_dir(engine_dir, device="cpu", attention_window=8, sink_tokens=8)
    with pytest.raises(ValueError, match="need an attention window"):
        Engine.from_dir(engine_dir, device="cpu", sink_tokens=4)  # Llama: no window of its own
    # a window covering max_seq_len hides nothing, so the sinks change nothing: both are dropped
    m = Engine.from_dir(engine_dir, device="cpu", attention_window=100000, sink_tokens=4).config.model
    assert (m.sliding_window, m.sink_tokens) == (None, 0)
    # a family with windowed and full layers (Gemma-2's kind): the sinks go to the windowed layers only
    mixed = dataclasses.replace(m, sliding_window=16, layer_types=("sliding_attention", "full_attention"))
    mixed = mixed.with_attention_sinks(4)
    assert [mixed.attention_sinks(i) for i in range(2)] == [4, 0]
