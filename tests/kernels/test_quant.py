"""Quantized linear kernels (weight-only int8 / int4, FP8) against their dequantize-then-float
references; the build-time quantizers' round-trip error; the int4 nibble order."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.kernels import quant  # noqa: E402

# the interpreter warns on tensor loop bounds; harmless
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
N, GROUP = 45, 64  # odd N: the last N tile is partial


def _skip_interpreted_bf16_dot(device: str, dtype: torch.dtype, M: int) -> None:
    if device == "cpu" and dtype == torch.bfloat16 and M > quant.GEMV_MAX_M:
        pytest.skip("the Triton 3.6 interpreter's tl.dot garbles bfloat16 (GEMM path); checked on the GPU")


def _quantize(mode: str, w: torch.Tensor, group: int):
    """-> (qweight, scale, zero, bits) as the engine stores them."""
    if mode == "int8":
        return (*K.quantize_int8_per_channel(w), None, 8)
    if mode == "int4":
        return (*K.quantize_int4_groupwise(w, group), None, 4)
    return (*K.quantize_int4_groupwise_asym(w, group), 4)


def _check_linear(device, dtype, M, k, mode, bias, group=GROUP, config=None, n=N):
    torch.manual_seed(M * 1000 + k + len(mode))
    w = torch.randn(n, k, device=device) / k**0.5
    q, s, z, bits = _quantize(mode, w, group)
    x = torch.randn(M, k, dtype=dtype, device=device)
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    ref = K.weight_only_linear_ref(x.float(), q, s, z, bits, group, None if b is None else b.float())
    y = K.weight_only_linear(x, q, s, z, bits, group, b, config)
    assert y.dtype == dtype and y.shape == (M, n)
    torch.testing.assert_close(y.float(), ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 17, 64])  # GEMV path up to 4, tl.dot tiles above
@pytest.mark.parametrize("mode", ["int8", "int4", "int4_zero"])
def test_weight_only_linear_matches_ref(device, dtype, M, mode):
    _skip_interpreted_bf16_dot(device, dtype, M)
    # int8: K not a multiple of BLOCK_K (masked K tail); int4: K a multiple of the group
    _check_linear(device, dtype, M, 200 if mode == "int8" else 256, mode, bias=M % 2 == 1)
    if dtype == torch.float16 and M in (1, 5):  # the other bias setting, once per path
        _check_linear(device, dtype, M, 200 if mode == "int8" else 256, mode, bias=M % 2 == 0)


@pytest.mark.parametrize("mode", ["int8", "int4", "int4_zero"])
@pytest.mark.parametrize(
    "M, group, config",
    [
        (3, 128, None),  # int4 GEMV tile = the whole group
        (2, 128, (2, 16, 32, 1, 1)),  # several K tiles per group, several N tiles
        (33, 32, None),  # group 32: GEMM BLOCK_K 32
        (33, 128, (16, 16, 32, 1, 1)),  # several M tiles; several K tiles per group
    ],
)
def test_weight_only_linear_group_sizes_and_configs(device, mode, M, group, config):
    _check_linear(device, torch.float16, M, 256, mode, bias=True, group=group, config=config)


def test_weight_only_linear_rejects_bad_args(device):
    w = torch.randn(8, 64, device=device)
    x = torch.randn(2, 64, device=device)
    q8, s8 = K.quantize_int8_per_channel(w)
    q4, s4 = K.quantize_int4_groupwise(w, 32)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        K.weight_only_linear(x, q8, s8, bits=3)
    with pytest.raises(ValueError, match="int8 scale must be"):
        K.weight_only_linear(x, q8, s8[:4], bits=8)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        K.weight_only_linear(x, q4, s4, bits=4, group_size=48)
    with pytest.raises(ValueError, match="int4 scale must be"):
        K.weight_only_linear(x, q4, s4, bits=4, group_size=64)
    with pytest.raises(ValueError, match="must divide group"):  # tl.dot path: a K tile within a group
        K.weight_only_linear(x.repeat(3, 1), q4, s4, bits=4, group_size=32, config=(16, 16, 64, 1, 1))
    assert K.weight_only_linear(x[:0], q8, s8, bits=8).shape == (0, 8)


# ---------------------------------------------------------------- word GEMV (M <= 4)


def _quantized(kind: str, w: torch.Tensor, group: int):
    """-> (call(x, bias, config), ref(x, bias)) for int8 / int4 / int4_zero / fp8 (per tensor) / fp8c."""
    if kind.startswith("fp8"):
        q, s = K.quantize_fp8(w, per_channel=kind == "fp8c")
        return (lambda x, b, c: K.fp8_weight_gemv(x, q, s, b, c)), (lambda x, b: K.fp8_weight_gemv_ref(x, q, s, b))
    q, s, z, bits = _quantize(kind, w, group)
    return (
        lambda x, b, c: K.weight_only_linear(x, q, s, z, bits, group, b, c),
        lambda x, b: K.weight_only_linear_ref(x, q, s, z, bits, group, b),
    )


def _check_word_gemv(device, kind, M, k, dtype, bias, config=None, n=N, group=GROUP, x=None):
    torch.manual_seed(M * 100 + k + len(kind))
    call, ref = _quantized(kind, torch.randn(n, k, device=device) / k**0.5, group)
    x = torch.randn(M, k, dtype=dtype, device=device) if x is None else x
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    y = call(x, b, config)
    assert y.dtype == dtype and y.shape == (M, n)
    expect = ref(x.float(), None if b is None else b.float())
    torch.testing.assert_close(y.float(), expect, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("kind", ["int8", "int4", "int4_zero", "fp8", "fp8c"])
@pytest.mark.parametrize(
    "M, dtype, config",
    [
        (1, torch.float16, None),
        (2, torch.bfloat16, None),
        (3, torch.float32, None),  # x read in its dtype, not as int64 words
        (4, torch.float16, None),
        # several N tiles and K tiles, K split 3 ways (float32 partials + the reduce pass, bias there)
        (1, torch.bfloat16, (1, 8, 32, 1, 2, 3)),
        (4, torch.float16, (4, 16, 64, 2, 1, 2)),
    ],
)
def test_word_gemv_matches_ref(device, kind, M, dtype, config):
    # int8 / fp8: K = 200 words-worth but not a whole number of 64-word tiles (masked K tail); int4 K = 256
    _check_word_gemv(device, kind, M, 256 if kind.startswith("int4") else 200, dtype, bias=M != 2, config=config)


@pytest.mark.parametrize("kind", ["int4", "int4_zero"])
def test_word_gemv_int4_tiles_span_groups(device, kind):
    # K tiles of 4 groups (64 columns each) with K = 5 groups: the last tile masked, the scales of the
    # groups past K too; K split in two (the second split one group)
    for config in ((2, 8, 256, 2, 2), (2, 8, 256, 2, 2, 2)):
        _check_word_gemv(device, kind, 2, 320, torch.float16, bias=True, config=config)


def test_word_gemv_default_split_k(device, monkeypatch):
    # N far below the SMs' worth of tiles: the default config splits K (int4: in whole groups)
    monkeypatch.setattr(quant, "num_sms", lambda device: 8)
    for kind in ("int4", "int8"):
        n, k = 9, 4096
        bn, bkw, warps, stages, split = quant._word_gemv_config(
            quant._Q_INT4 if kind == "int4" else quant._Q_INT8, 1, n, k, 128, device, None
        )
        assert split > 1
        _check_word_gemv(device, kind, 1, k, torch.float16, bias=True, n=n, group=128)


@pytest.mark.parametrize("kind", ["int8", "fp8c", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_word_gemv_every_stored_value_exact(device, kind, dtype):
    # every int8 / e4m3 (subnormals too) / int4 code in every byte or nibble position of a word, read
    # through one-hot x rows (exact products): y[m, n] = w[n, k_m] * scale, rounded once to x's dtype
    n, k = 8, 256
    codes = (torch.arange(k, device=device)[None, :] * 7 + torch.arange(n, device=device)[:, None] * 37) % 256
    if kind == "int8":
        q = (codes - 128).to(torch.int8)
        s = torch.rand(n, device=device) + 0.5
        deq = K.dequantize_int8_per_channel(q, s)
        call = lambda x: K.weight_only_linear(x, q, s, None, 8)  # noqa: E731
    elif kind == "fp8c":
        q = codes.to(torch.uint8).view(torch.float8_e4m3fn)
        q = torch.where(q.float().isnan(), torch.zeros_like(q.float()), q.float()).to(torch.float8_e4m3fn)
        s = torch.rand(n, device=device) + 0.5
        deq = K.dequantize_fp8(q, s)
        call = lambda x: K.fp8_weight_gemv(x, q, s)  # noqa: E731
    else:
        q = K.pack_int4((codes % 16).to(torch.uint8))
        s = (torch.rand(k // 64, n, device=device) + 0.5).half()
        deq = K.dequantize_int4_groupwise(q, s)
        call = lambda x: K.weight_only_linear(x, q, s, None, 4, 64)  # noqa: E731
    for cols in ((0, 1, 2, 3), (4, 5, 6, 7), (129, 250, 255, 8)):
        x = torch.zeros(4, k, dtype=dtype, device=device)
        x[torch.arange(4), torch.tensor(cols)] = 1.0
        torch.testing.assert_close(call(x), deq[:, list(cols)].t().to(dtype), rtol=0, atol=0)
    if dtype == torch.float32:  # and a dense x against float32 math on the dequantized weights
        x = torch.randn(3, k, device=device)
        bound = 1e-6 * (x.abs() @ deq.abs().t()).max().item()  # float32 sums in another order
        torch.testing.assert_close(call(x), x @ deq.t(), rtol=0, atol=bound)


def test_word_gemv_unaligned_inputs_fall_back(device, monkeypatch):
    """K % 4 != 0 (int8, fp8) or weight rows not whole int32 words: the element-wise GEMV; x at an odd
    offset: the word GEMV reading x in its dtype. All match the reference."""
    used = []
    real = quant._launch_word_gemv
    monkeypatch.setattr(quant, "_launch_word_gemv", lambda *a: used.append(1) or real(*a))
    _check_word_gemv(device, "int8", 2, 202, torch.float16, bias=True)
    _check_word_gemv(device, "fp8c", 1, 302, torch.bfloat16, bias=False)
    assert not used
    torch.manual_seed(0)
    w = torch.randn(N, 130, device=device)[:, :128]  # rows 130 bytes apart: not whole words
    q, s = K.quantize_int8_per_channel(w)
    q = torch.zeros(N, 130, dtype=torch.int8, device=device)[:, :128].copy_(q)
    x = torch.randn(1, 128, dtype=torch.float16, device=device)
    torch.testing.assert_close(
        K.weight_only_linear(x, q, s).float(), K.weight_only_linear_ref(x.float(), q, s), rtol=2e-3, atol=2e-3
    )
    assert not used
    xs = torch.randn(3, 129, dtype=torch.float16, device=device)[:, 1:]  # x 2 bytes off 8-byte alignment
    _check_word_gemv(device, "int4", 3, 128, torch.float16, bias=True, x=xs)
    _check_word_gemv(device, "fp8", 3, 128, torch.float16, bias=True, x=xs)
    assert len(used) == 2
    with pytest.raises(ValueError, match="SPLIT_K"):  # the element-wise GEMV has no K split
        _check_word_gemv(device, "int8", 1, 202, torch.float16, bias=False, config=(1, 8, 64, 1, 1, 2))


def test_word_gemv_rejects_bad_configs(device):
    w = torch.randn(8, 64, device=device)
    x = torch.randn(2, 64, dtype=torch.float16, device=device)
    q8, s8 = K.quantize_int8_per_channel(w)
    with pytest.raises(ValueError, match="multiple of 4"):
        K.weight_only_linear(x, q8, s8, config=(2, 8, 6, 1, 1))
    with pytest.raises(ValueError, match="powers of 2"):
        K.weight_only_linear(x, q8, s8, config=(2, 8, 24, 1, 1))
    with pytest.raises(ValueError, match="BLOCK_M 1 must cover M=2"):
        K.weight_only_linear(x, q8, s8, config=(1, 8, 64, 1, 1))
    q4, s4 = K.quantize_int4_groupwise(torch.randn(8, 96, device=device), 48)
    with pytest.raises(ValueError, match="divide the group or be a multiple"):
        K.weight_only_linear(x.repeat(1, 2)[:, :96], q4, s4, bits=4, group_size=48, config=(2, 8, 32, 1, 1))
    # (the default tile for a group of 48: 16 columns, dividing it)
    xg = torch.randn(2, 96, dtype=torch.float16, device=device)
    torch.testing.assert_close(
        K.weight_only_linear(xg, q4, s4, bits=4, group_size=48).float(),
        K.weight_only_linear_ref(xg.float(), q4, s4, bits=4, group_size=48),
        rtol=2e-3,
        atol=2e-3,
    )


# ---------------------------------------------------------------- quantizers


def test_int8_per_channel_round_trip(device):
    torch.manual_seed(0)
    w = torch.randn(N, 96, device=device) * torch.rand(N, 1, device=device)
    w[3] = 0  # an all-zero channel: zeros back, no NaN
    q, s = K.quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (N,)
    deq = K.dequantize_int8_per_channel(q, s)
    assert (deq - w).abs().le(s[:, None] / 2 * (1 + 1e-5)).all()
    assert (deq[3] == 0).all() and q.abs().amax(dim=1)[torch.arange(N) != 3].eq(127).all()
    assert ((deq - w).norm() / w.norm()).item() < 0.01


@pytest.mark.parametrize("group", [32, 128])
def test_int4_symmetric_round_trip(device, group):
    torch.manual_seed(group)
    w = torch.randn(N, 256, device=device)
    w[:, :group] = 0  # an all-zero group
    packed, s = K.quantize_int4_groupwise(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (N, 128)
    assert s.dtype == torch.float16 and s.shape == (256 // group, N)
    deq = K.dequantize_int4_groupwise(packed, s)
    step = s.float().t().repeat_interleave(group, dim=1)  # [N, K]
    assert (deq - w).abs().le(step / 2 * (1 + 1e-5)).all()  # within half a step of the scale
    assert (deq[:, :group] == 0).all()
    assert K.unpack_int4(packed).ge(1).all()  # symmetric: -7..7 around 8


@pytest.mark.parametrize("group", [32, 128])
def test_int4_zero_point_round_trip(device, group):
    torch.manual_seed(group)
    w = torch.randn(N, 256, device=device) + torch.randn(N, 1, device=device)  # off-centre groups
    packed, s, z = K.quantize_int4_groupwise_asym(w, group)
    assert s.shape == z.shape == (256 // group, N) and s.dtype == z.dtype == torch.float16
    deq = K.dequantize_int4_groupwise(packed, s, z)
    step = s.float().t().repeat_interleave(group, dim=1)
    zero = z.float().t().repeat_interleave(group, dim=1)
    # half a step, plus float16 rounding of zero and scale at the clamped ends
    bound = step / 2 + 2**-10 * (zero.abs() + 15 * step)
    assert (deq - w).abs().le(bound).all()
    # min and max of each group come back (almost) exactly: both ends of the range are used
    q = K.unpack_int4(packed).view(N, -1, group)
    assert q.amin(dim=2).eq(0).all() and q.amax(dim=2).eq(15).all()


def test_pack_int4_nibble_order_and_inverse(device):
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 0, 15]], dtype=torch.uint8, device=device)
    # column 2j in the low nibble, 2j+1 in the high nibble
    assert K.pack_int4(q).tolist() == [[0x21, 0x43], [0x0F, 0xF0]]
    torch.manual_seed(0)
    q = torch.randint(0, 16, (5, 3, 64), dtype=torch.uint8, device=device)
    assert torch.equal(K.unpack_int4(K.pack_int4(q)), q)
    p = torch.randint(0, 256, (7, 32), dtype=torch.uint8, device=device)
    assert torch.equal(K.pack_int4(K.unpack_int4(p)), p)
    with pytest.raises(ValueError, match="even"):
        K.pack_int4(q[..., :3])


@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_round_trip(device, per_channel):
    torch.manual_seed(0)
    w = torch.randn(N, 128, device=device) * torch.rand(N, 1, device=device)
    q, s = K.quantize_fp8(w, per_channel)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert s.shape == ((N,) if per_channel else ())
    deq = K.dequantize_fp8(q, s)
    # 3 mantissa bits: half a step is 2^-4 relative; below 2^-6 (subnormal) steps are 2^-9 * scale
    s2 = s[:, None] if per_channel else s
    assert (deq - w).abs().le(w.abs() * 2**-4 + s2 * 2**-10 + 1e-12).all()
    assert q.float().abs().amax() == quant.FP8_MAX


# ---------------------------------------------------------------- FP8 kernels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_weight_gemv_matches_ref(device, dtype, M, per_channel):
    torch.manual_seed(M)
    k = 300  # not a multiple of BLOCK_K
    w, s = K.quantize_fp8(torch.randn(N, k, device=device) / k**0.5, per_channel)
    x = torch.randn(M, k, dtype=dtype, device=device)
    b = torch.randn(N, dtype=dtype, device=device) if M % 2 else None
    ref = K.fp8_weight_gemv_ref(x.float(), w, s, None if b is None else b.float())
    y = K.fp8_weight_gemv(x, w, s, b)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_fp8_weight_gemv_rejects_bad_args(device):
    w, s = K.quantize_fp8(torch.randn(8, 32, device=device))
    with pytest.raises(ValueError, match="M=5 outside 1..4"):
        K.fp8_weight_gemv(torch.randn(5, 32, device=device), w, s)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        K.fp8_weight_gemv(torch.randn(1, 32, device=device), w.float(), s)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M, k", [(1, 64), (6, 300)])  # 300: several K tiles under the interpreter
def test_quantize_fp8_per_token_matches_ref(device, dtype, M, k):
    torch.manual_seed(k)
    x = (torch.randn(M, k, device=device) * torch.logspace(-3, 3, M, device=device)[:, None]).to(dtype)
    x[-1] = 0  # a zero row: scale stays finite, values 0
    xq, s = K.quantize_fp8_per_token(x)
    rq, rs = K.quantize_fp8_per_token_ref(x)
    assert xq.dtype == torch.float8_e4m3fn and s.shape == (M, 1) and s.dtype == torch.float32
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    torch.testing.assert_close(xq.float(), rq.float(), rtol=0, atol=0)
    assert xq.float().abs().amax(dim=1)[:-1].eq(quant.FP8_MAX).all() and (xq[-1].float() == 0).all()


def test_quantize_fp8_static_rounds_like_torch(device):
    # every finite e4m3 value, the midpoints between neighbours (ties: half to even), subnormals and
    # values past 448 (saturate)
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite() & grid.ge(0)].unique()
    mid = (grid[1:] + grid[:-1]) / 2
    v = torch.cat([grid, mid, mid * (1 + 2**-10), mid * (1 - 2**-10), torch.tensor([460.0, 500.0, 1e4])])
    x = torch.cat([v, -v]).to(device)
    x = F.pad(x, (0, (-x.numel()) % 16)).view(16, -1)
    scale = torch.tensor(0.5, device=device)
    ref = K.quantize_fp8_static_ref(x * 0.5, scale)  # x * 0.5 / 0.5 = x exactly
    out = K.quantize_fp8_static(x * 0.5, scale)
    assert out.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=0)
    assert out.float().abs().max() == quant.FP8_MAX


@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_ref_simulates_w8a8(device, static):
    torch.manual_seed(0)
    x = torch.randn(5, 128, dtype=torch.float16, device=device)
    w = torch.randn(N, 128, device=device) / 128**0.5
    b = torch.randn(N, dtype=torch.float16, device=device)
    wq, ws = K.quantize_fp8(w, per_channel=not static)
    x_scale = x.float().abs().amax() / quant.FP8_MAX if static else None
    y = K.fp8_linear_ref(x, wq, ws, x_scale, b)
    assert y.dtype == torch.float16 and y.shape == (5, N)
    exact = F.linear(x.float(), w, b.float())
    # e4m3 on both operands: a few percent of the output's scale
    assert (y.float() - exact).abs().max() < 0.05 * exact.abs().max()
    # the quantized operands, not the float ones, are what it multiplies
    xq = K.quantize_fp8_static_ref(x, x_scale) if static else K.quantize_fp8_per_token_ref(x)[0]
    xs = x_scale if static else K.quantize_fp8_per_token_ref(x)[1]
    sim = F.linear(K.dequantize_fp8(xq, xs), K.dequantize_fp8(wq, ws), b.float()).half()
    torch.testing.assert_close(y, sim, rtol=0, atol=0)
