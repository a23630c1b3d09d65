"""write_kv_cache, rms_norm, silu_and_mul, apply_rotary and the fused rotary + KV write against their
PyTorch references."""

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm import kernels as K  # noqa: E402

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
def test_write_kv_cache(device, dtype, strided):
    torch.manual_seed(0)
    T, Hkv, D, blocks, tpb = 7, 3, 24, 5, 4
    if strided:  # k and v as views of a fused [T, Hq + 2 Hkv, D] output
        qkv = torch.randn(T, 2 + 2 * Hkv, D, dtype=dtype, device=device)
        k, v = qkv[:, 2 : 2 + Hkv], qkv[:, 2 + Hkv :]
    else:
        k = torch.randn(T, Hkv, D, dtype=dtype, device=device)
        v = torch.randn(T, Hkv, D, dtype=dtype, device=device)
    slots = torch.randperm(blocks * tpb, device=device)[:T]
    slots[3] = -1  # a padding token writes nothing
    kc = torch.randn(blocks, tpb, Hkv, D, dtype=dtype, device=device)
    vc = torch.randn_like(kc)
    kc2, vc2 = kc.clone(), vc.clone()
    K.write_kv_cache(k, v, kc, vc, slots)
    K.write_kv_cache_ref(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    s = int(slots[0])
    assert torch.equal(kc[s // tpb, s % tpb], k[0])


def test_write_kv_cache_rejects_bad_shapes(device):
    k = torch.randn(2, 2, 8, device=device)
    kc = torch.randn(3, 4, 2, 16, device=device)
    with pytest.raises(ValueError, match="cache heads/dim"):
        K.write_kv_cache(k, k, kc, kc, torch.zeros(2, dtype=torch.long, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 100])
def test_rms_norm(device, dtype, hidden):
    torch.manual_seed(0)
    x = torch.randn(5, hidden, dtype=dtype, device=device)
    w = torch.rand(hidden, dtype=dtype, device=device) + 0.5
    _close(K.rms_norm(x, w, 1e-5), K.rms_norm_ref(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_fused_residual(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, dtype=dtype, device=device)
    r = torch.randn_like(x)
    w = torch.rand(48, dtype=dtype, device=device) + 0.5
    x0, r0 = x.clone(), r.clone()
    y, new_r = K.rms_norm(x, w, 1e-6, r)
    y_ref, new_r_ref = K.rms_norm_ref(x, w, 1e-6, r)
    _close(y, y_ref, dtype)
    assert torch.equal(new_r, new_r_ref)
    assert torch.equal(x, x0) and torch.equal(r, r0)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_unit_offset(device, dtype, residual):
    # Gemma: y = x / rms(x) * (1 + w), w around 0
    torch.manual_seed(0)
    x = torch.randn(6, 80, dtype=dtype, device=device)
    w = (torch.randn(80, device=device) * 0.3).to(dtype)
    r = torch.randn_like(x) if residual else None
    out, ref = K.rms_norm(x, w, 1e-6, r, unit_offset=True), K.rms_norm_ref(x, w, 1e-6, r, unit_offset=True)
    if residual:
        (out, new_r), (ref, new_r_ref) = out, ref
        assert torch.equal(new_r, new_r_ref)
    _close(out, ref, dtype)
    xf = x.float() + (r.float() if residual else 0)
    gemma = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w.float())).to(dtype)
    _close(ref, gemma, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's numpy
def test_gelu_tanh_and_mul(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2 * 80, dtype=dtype, device=device) * 3
    x[0, 0, :4] = torch.tensor([-60.0, 60.0, -1e4, 0.0])  # saturated tails: exp overflow must not give NaN
    y = K.gelu_tanh_and_mul(x)
    assert y.shape == (3, 4, 80) and y.isfinite().all()
    _close(y, K.gelu_tanh_and_mul_ref(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2 * 80, dtype=dtype, device=device) * 3
    y = K.silu_and_mul(x)
    assert y.shape == (3, 4, 80)
    _close(y, K.silu_and_mul_ref(x), dtype)


def test_silu_and_mul_rejects_odd(device):
    with pytest.raises(ValueError, match="even"):
        K.silu_and_mul(torch.randn(2, 5, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_apply_rotary(device, dtype, heads):
    torch.manual_seed(0)
    H, Hkv = heads
    T, D = 6, 32
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # fmt: skip
    cache = K.rope_cos_sin_cache(D, 512, 500000.0, scaling, device=device)
    qkv = torch.randn(T, H + 2 * Hkv, D, dtype=dtype, device=device)
    q, k = qkv[:, :H], qkv[:, H : H + Hkv]  # strided views, as from a fused QKV projection
    positions = torch.randint(0, 512, (T,), device=device)
    q0 = q.clone()
    qo, ko = K.apply_rotary(q, k, positions, cache)
    qr, kr = K.apply_rotary_ref(q, k, positions, cache)
    _close(qo, qr, dtype)
    _close(ko, kr, dtype)
    assert torch.equal(q, q0)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}  # fmt: skip


@pytest.mark.parametrize("dtype", [*DTYPES, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("tpb", [4, 8])
def test_rotary_write_kv_cache(device, dtype, heads, tpb):
    torch.manual_seed(0)
    H, Hkv = heads
    T, D, blocks = 7, 32, 6
    cache = K.rope_cos_sin_cache(D, 512, 500000.0, LLAMA3_SCALING, device=device)
    qkv = torch.randn(T, H + 2 * Hkv, D, dtype=dtype, device=device)
    q, k, v = qkv[:, :H], qkv[:, H : H + Hkv], qkv[:, H + Hkv :]  # strided views of a fused QKV output
    positions = torch.randint(0, 512, (T,), device=device)
    slots = torch.randperm(blocks * tpb, device=device)[:T]
    slots[2] = -1  # a padding token: its q is rotated, its K/V are written nowhere
    kc = torch.randn(blocks, tpb, Hkv, D, dtype=dtype, device=device)
    vc = torch.randn_like(kc)
    kc_ref, vc_ref, qkv0 = kc.clone(), vc.clone(), qkv.clone()
    qo = K.rotary_write_kv_cache(q, k, v, positions, cache, kc, vc, slots)
    qr = K.rotary_write_kv_cache_ref(q, k, v, positions, cache, kc_ref, vc_ref, slots)
    assert qo.shape == (T, H, D) and qo.is_contiguous()
    _close(qo, qr, dtype)
    _close(kc, kc_ref, dtype)
    assert torch.equal(vc, vc_ref)  # v is copied, not computed
    assert torch.equal(qkv, qkv0)  # inputs untouched
    # and it is the separate kernels' result
    kc2, vc2 = torch.randn_like(kc), torch.randn_like(vc)
    kc3, vc3 = kc2.clone(), vc2.clone()
    q2, k2 = K.apply_rotary(q, k, positions, cache)
    K.write_kv_cache(k2, v, kc2, vc2, slots)
    torch.testing.assert_close(K.rotary_write_kv_cache(q, k, v, positions, cache, kc3, vc3, slots), q2)
    torch.testing.assert_close(kc3, kc2)
    assert torch.equal(vc3, vc2)


def test_rotary_write_kv_cache_rejects_bad_shapes(device):
    cache = K.rope_cos_sin_cache(16, 64, device=device)
    q, k = torch.randn(2, 4, 16, device=device), torch.randn(2, 2, 16, device=device)
    kc = torch.randn(3, 4, 2, 16, device=device)
    slots = torch.zeros(2, dtype=torch.long, device=device)
    pos = torch.zeros(2, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="cache heads/dim"):
        K.rotary_write_kv_cache(q, k, k, pos, cache, kc[:, :, :1], kc[:, :, :1], slots)
    with pytest.raises(ValueError, match="share T"):
        K.rotary_write_kv_cache(q[:1], k, k, pos, cache, kc, kc, slots)


def test_rope_cache_matches_hugging_face():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128}  # fmt: skip
    cfg = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=4, max_position_embeddings=1024, rope_theta=500000.0,
        rope_scaling=scaling,
    )  # fmt: skip
    rope = modeling_llama.LlamaRotaryEmbedding(config=cfg)
    pos = torch.arange(1024)[None]
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), pos)
    cache = K.rope_cos_sin_cache(64, 1024, 500000.0, scaling)
    torch.testing.assert_close(cache[:, :32], cos[0, :, :32], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[:, 32:], sin[0, :, :32], rtol=1e-5, atol=1e-5)
