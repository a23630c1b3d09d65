"""SmoothQuant's kernels (per-token / static int8 quantization of smoothed activations, the int8 GEMM with
its scales in the epilogue) against their PyTorch references."""

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm import kernels as K  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M, k", [(1, 64), (5, 200), (33, 256)])
def test_quantize_int8_matches_ref(device, dtype, M, k):
    torch.manual_seed(M + k)
    x = (torch.randn(M, k) * 3).to(dtype).to(device)
    smoother = (torch.rand(k) + 0.5).to(device)
    q, s = K.quantize_int8_per_token(x, smoother)
    q_ref, s_ref = K.quantize_int8_per_token_ref(x, smoother)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    # rounding of exact halves may differ by one step (half away from zero vs half to even)
    assert (q.int() - q_ref.int()).abs().max() <= 1 and (q != q_ref).float().mean() < 0.01
    assert q_ref.abs().amax(dim=1).eq(127).all()  # every row uses the whole range
    static = torch.tensor(0.05, device=device)
    qs = K.quantize_int8_static(x, smoother, static)
    assert (qs.int() - K.quantize_int8_static_ref(x, smoother, static).int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, n, k", [(1, 40, 128), (17, 72, 256), (70, 130, 200)])
@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_ref(device, dtype, M, n, k, per_token, bias):
    g = torch.Generator().manual_seed(M * n + k)
    xq = torch.randint(-127, 128, (M, k), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    xs = (torch.rand(M, 1, generator=g) * 1e-2).to(device) if per_token else torch.tensor(3e-3, device=device)
    ws = (torch.rand(n, generator=g) * 1e-2).to(device)
    b = torch.randn(n, generator=g).to(dtype).to(device) if bias else None
    y = K.int8_linear(xq, xs, w, ws, b, dtype)
    ref = K.int8_linear_ref(xq, xs, w, ws, b, dtype)
    assert y.dtype == dtype and y.shape == (M, n)
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_smooth_quant_linear_ref_close_to_float(device):
    """The reference of the whole layer, on a smoothed, quantized weight, stays near the float product."""
    torch.manual_seed(0)
    x = torch.randn(9, 128)
    x[:, 3] *= 30  # an outlier channel, what SmoothQuant exists for
    w = torch.randn(48, 128) / 128**0.5
    s = (x.abs().amax(0) ** 0.5 / w.abs().amax(0) ** 0.5).clamp(min=1e-5)
    ws = w * s
    scale = ws.abs().amax(dim=1) / 127
    wq = torch.round(ws / scale[:, None]).to(torch.int8)
    y = K.smooth_quant_linear_ref(x, 1 / s, wq, scale, None, None)
    ref = x @ w.t()
    assert float((y - ref).norm() / ref.norm()) < 0.02


@pytest.mark.parametrize("static", [False, True])
def test_smooth_quant_linear_matches_ref(device, static):
    torch.manual_seed(1)
    x = torch.randn(20, 96, dtype=torch.float16, device=device)
    smoother = (torch.rand(96) + 0.5).to(device)
    w = torch.randint(-127, 128, (40, 96), dtype=torch.int8).to(device)
    ws = (torch.rand(40) * 1e-2).to(device)
    xs = torch.tensor(0.03, device=device) if static else None
    y = K.smooth_quant_linear(x, smoother, w, ws, xs, None)
    torch.testing.assert_close(
        y.float(), K.smooth_quant_linear_ref(x, smoother, w, ws, xs, None).float(), rtol=2e-2, atol=2e-2
    )
