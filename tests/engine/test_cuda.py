"""On a GPU (the H100 machine): float16 engine on CUDA against Hugging Face float16 on the same weights.
Skipped on CPU machines."""

import copy

import pytest
import torch

from tensorrt_llm.runtime import Engine, ModelRunner, build_step_input
from tests.engine.test_families_vs_hf import FAMILIES, make_family_model
from tests.helpers import build_engine, make_tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_fp16_cuda_matches_hf(tmp_path, kv_heads):
    hf = make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384, num_key_value_heads=kv_heads)
    hf = hf.half().cuda()
    build_engine(tmp_path / "hf", tmp_path / "engine", dtype="float16")
    engine = Engine.from_dir(tmp_path / "engine", device="cuda")
    kv = engine.make_kv_cache(32)
    torch.manual_seed(3)
    prompt = torch.randint(4, 384, (40,)).tolist()
    step = build_step_input([prompt], [0], [list(range(8))], 8, "cuda", all_logits=True)
    ours = engine.forward(step, kv)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt], device="cuda")).logits[0].float()
    rel = ((ours - ref).norm() / ref.norm()).item()
    print(f"fp16 CUDA prompt logits relative error vs HF: {rel:.2e}")
    assert rel < 5e-3
    runner = ModelRunner(engine, 64)
    prompts = [torch.randint(4, 384, (n,)).tolist() for n in (7, 40, 19)]
    out = runner.generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0, return_dict=True)
    agree = []
    for i, p in enumerate(prompts):
        with torch.no_grad():
            r = hf.generate(
                torch.tensor([p], device="cuda"), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        agree.append(out["output_ids"][i, 0, : r.shape[1]].tolist() == r[0].tolist())
    print(f"greedy ids equal to HF for 16 tokens: {agree}")
    assert all(agree)
    # The same through captured CUDA graphs and without them.
    assert engine.graphs is not None
    eager_runner = ModelRunner(engine, 64, cuda_graphs=False)
    eager = eager_runner.generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0)
    assert torch.equal(eager, out["output_ids"])
    # Single prompts run their context step through the padded prefill graphs.
    for p in prompts:
        graphed = runner.generate([p], max_new_tokens=16, end_id=-1, pad_id=0)
        assert torch.equal(graphed, eager_runner.generate([p], max_new_tokens=16, end_id=-1, pad_id=0))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fp16_cuda_families_match_hf(tmp_path, name):
    """Every family's kernel options on the GPU (sliding window, soft-capping, Gemma's norm, GeLU-tanh,
    QK-norm): prompt logits against Hugging Face float32 (the oracle), no further from it than Hugging
    Face's own float16 run, greedy tokens (up to float16 ties), and CUDA graphs equal to eager."""
    hf32 = make_family_model(name, tmp_path / "hf").float().cuda()
    hf = copy.deepcopy(hf32).half()
    build_engine(tmp_path / "hf", tmp_path / "engine", dtype="float16")
    engine = Engine.from_dir(tmp_path / "engine", device="cuda")
    kv = engine.make_kv_cache(32)
    torch.manual_seed(3)
    prompt = torch.randint(4, 384, (40,)).tolist()  # longer than the families' 12-key windows
    ours = engine.forward(build_step_input([prompt], [0], [list(range(8))], 8, "cuda", all_logits=True), kv)
    with torch.no_grad():
        ref = hf32(torch.tensor([prompt], device="cuda")).logits[0].float()
        ref16 = hf(torch.tensor([prompt], device="cuda")).logits[0].float()
    rel = ((ours - ref).norm() / ref.norm()).item()
    rel_hf = ((ref16 - ref).norm() / ref.norm()).item()
    print(f"{name}: fp16 CUDA prompt logits relative error vs HF fp32: ours {rel:.2e}, HF fp16 {rel_hf:.2e}")
    assert rel < max(5e-3, 1.5 * rel_hf)
    runner = ModelRunner(engine, 64)
    prompts = [torch.randint(4, 384, (n,)).tolist() for n in (7, 40, 19)]
    out = runner.generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0)
    for i, p in enumerate(prompts):
        # Greedy up to ties: each of our tokens is the float32 oracle's best given our own prefix, within a
        # float16 margin. (Exact ids are not comparable here: Gemma-2's logit soft-capping squeezes a random
        # model's logits into near-ties, 1.6e-4 apart on prompt 0, which float16 noise breaks either way.)
        seq = out[i, 0, : len(p) + 16]
        with torch.no_grad():
            lg = hf32(seq[None].cuda()).logits[0, len(p) - 1 : -1].float()  # [16, V], the logits of each step
        chosen = lg.gather(1, seq[len(p) :, None].cuda().long())[:, 0]
        slack = 1e-2 * (lg.amax(1) - lg.amin(1)) + 1e-3
        assert bool((chosen >= lg.amax(1) - slack).all()), f"{name}: prompt {i}: a generated token is not greedy"
    eager = ModelRunner(engine, 64, cuda_graphs=False).generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0)
    assert torch.equal(eager, out)


def test_gemv_choice_runs_in_cuda_graphs(tmp_path):
    """Every linear shape forced onto the Triton GEMV: a batch-1 decode step replayed from a CUDA graph
    gives the logits of the eager cuBLAS step."""
    from tensorrt_llm.builder import linear_weight_shapes
    from tensorrt_llm.kernels import tuning

    make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384, num_key_value_heads=2)
    build_engine(tmp_path / "hf", tmp_path / "engine", dtype="float16")
    engine = Engine.from_dir(tmp_path / "engine", device="cuda")
    kv = engine.make_kv_cache(32)
    engine.forward(build_step_input([list(range(4, 44))], [0], [list(range(8))], 8, "cuda"), kv)
    step = build_step_input([[50]], [40], [list(range(8))], 8, "cuda")  # rewrites the same K/V each time
    plain = engine.forward(step, kv)
    shapes = linear_weight_shapes(engine.config.model, engine.config.mapping, torch.float16)
    fields = ("N", "K", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
    every = [dict(zip(fields, (*s, 4, 512, 4, 3), strict=True)) for s in shapes]
    before = tuning.current_configs()
    tuning.apply_configs({**before, "linear_gemv": {"shapes": every}})
    try:
        engine.capture_cuda_graphs(kv)
        graphed = engine.forward(step, kv)
    finally:
        tuning.apply_configs(before)
    rel = ((graphed - plain).norm() / plain.norm()).item()
    print(f"GEMV in CUDA graphs vs eager cuBLAS, decode logits relative error: {rel:.2e}")
    assert rel < 5e-3
