"""top_k_top_p_sample: reproducible per-row seeds, greedy cases, and the distribution it draws from."""

import pytest
import torch

from tensorrt_llm import kernels as K
from tensorrt_llm.kernels.sampling import bits_to_uniform


def _params(n, t=1.0, k=0, p=0.0, device="cpu"):
    return (
        torch.full((n,), t, device=device),
        torch.full((n,), k, dtype=torch.int32, device=device),
        torch.full((n,), p, device=device),
    )


def test_same_seed_same_token_and_seeds_differ(device):
    logits = torch.randn(1, 1000, device=device).expand(64, -1).contiguous()
    seeds = torch.arange(64, device=device) * 7919
    a = K.top_k_top_p_sample(logits, *_params(64, device=device), seeds=seeds)
    b = K.top_k_top_p_sample(logits, *_params(64, device=device), seeds=seeds)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) > 10  # flat-ish distribution over 1000 tokens: draws differ
    c = K.top_k_top_p_sample(logits, *_params(64, device=device), seeds=seeds, offsets=torch.ones_like(seeds))
    assert not torch.equal(a, c)  # a new step (offset) draws new noise


def test_row_draw_depends_only_on_its_seed(device):
    logits = torch.randn(8, 50, device=device)
    seeds = torch.arange(8, device=device)
    full = K.top_k_top_p_sample(logits, *_params(8, device=device), seeds=seeds)
    part = K.top_k_top_p_sample(logits[3:5], *_params(2, device=device), seeds=seeds[3:5])
    assert torch.equal(full[3:5], part)


@pytest.mark.parametrize("how", ["top_k_1", "temperature_0", "tiny_top_p"])
def test_greedy_cases_pick_argmax(device, how):
    logits = torch.randn(16, 300, device=device)
    kw = {"top_k_1": {"k": 1}, "temperature_0": {"t": 0.0}, "tiny_top_p": {"p": 1e-6}}[how]
    out = K.top_k_top_p_sample(logits, *_params(16, device=device, **kw), seeds=torch.arange(16, device=device))
    assert torch.equal(out, logits.argmax(-1))


def test_max_top_k_hint_gives_same_tokens(device):
    logits = torch.randn(32, 500, device=device)
    t, k, p = _params(32, t=0.8, k=20, p=0.9, device=device)
    k[::2] = 5
    seeds = torch.arange(32, device=device)
    a = K.top_k_top_p_sample(logits, t, k, p, seeds=seeds)
    b = K.top_k_top_p_sample(logits, t, k, p, seeds=seeds, max_top_k=20)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("t", "k", "p"), [(1.0, 0, 0.0), (0.7, 3, 0.0), (1.0, 0, 0.6), (1.3, 4, 0.8)])
def test_distribution_matches_filtered_softmax(t, k, p):
    torch.manual_seed(0)
    V, n = 8, 40000
    row = torch.randn(V) * 1.5
    logits = row.expand(n, -1).contiguous()
    out = K.top_k_top_p_sample(logits, *_params(n, t, k, p), seeds=torch.arange(n) + 12345)
    freq = torch.bincount(out, minlength=V).float() / n
    want = K.top_k_top_p_probs(row / t, k, p)
    assert torch.all(freq[want == 0] == 0)  # filtered tokens never drawn
    torch.testing.assert_close(freq, want, rtol=0, atol=0.01)  # ~4 standard errors at n = 40000


def test_generator_path_and_reference_agree_in_distribution():
    V, n = 6, 20000
    row = torch.randn(V)
    logits = row.expand(n, -1).contiguous()
    params = _params(n, 1.0, 4, 0.9)
    g = torch.Generator().manual_seed(1)
    fast = torch.bincount(K.top_k_top_p_sample(logits, *params, generator=g), minlength=V) / n
    ref = torch.bincount(K.top_k_top_p_sample_ref(logits[:4000], *(x[:4000] for x in params), g), minlength=V)
    want = K.top_k_top_p_probs(row, 4, 0.9)
    torch.testing.assert_close(fast, want, rtol=0, atol=0.015)
    torch.testing.assert_close(ref / 4000, want, rtol=0, atol=0.03)


def test_hash_uniform_is_uniform():
    u = K.hash_uniform(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.arange(50000)[None].expand(4, -1))
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002


def test_uniform_never_reaches_0_or_1():
    u = bits_to_uniform(torch.tensor([0, 1, 2**32 - 1, 2**32 - 2]))
    assert u.min() > 0 and u.max() < 1 and (-torch.log(u)).min() > 0


def test_top_k_1_is_argmax_on_a_big_vocabulary(device):
    # 64 x 128k draws hit the extreme noise values that once made a 0/0 race
    logits = torch.randn(64, 128256, device=device) * 3
    n = logits.shape[0]
    out = K.top_k_top_p_sample(logits, *_params(n, k=1, device=device), seeds=torch.arange(n, device=device))
    assert torch.equal(out, logits.argmax(-1))


@pytest.mark.parametrize("greedy", [True, False])
def test_step_sampling_never_waits_for_the_device(device, greedy):
    # The executor overlaps host and GPU only if building and applying the sampling tensors never blocks on
    # the stream: a banned-id fill copied from the host once waited for every step's forward (min_length).
    # On CUDA any synchronizing op raises here; on CPU the bans still apply.
    from tensorrt_llm.runtime.sampling import make_sampling_tensors, sample

    n, vocab = 6, 300
    logits = torch.randn(n, vocab, device=device)
    top = logits.argmax(-1)
    banned = [[x] for x in top.tolist()]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        st = make_sampling_tensors(
            vocab, device, [0.0 if greedy else 0.8] * n, [0] * n, [1.0] * n, banned=banned, seeds=list(range(n)),
            offsets=[1] * n, presence_penalty=[0.5] * n, output_ids=[[1, 2]] * n,
        )  # fmt: skip
        tokens, _ = sample(logits.clone(), st)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert not (tokens == top).any()  # each row's banned id (its argmax) was never drawn
