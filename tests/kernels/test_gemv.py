"""The skinny GEMM (decode-time linear layers) against its PyTorch reference."""

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm.kernels.gemv import gemv, gemv_ref  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("N, K", [(24, 512), (40, 300)])  # K a multiple of the tile, and not
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(device, dtype, M, N, K, bias):
    torch.manual_seed(M * 1000 + N + K)
    x = torch.randn(M, K, dtype=dtype, device=device)
    w = torch.randn(N, K, dtype=dtype, device=device) / K**0.5
    b = torch.randn(N, dtype=dtype, device=device) if bias else None
    ref = gemv_ref(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(gemv(x, w, b).float(), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_gemv_rejects_bad_shapes(device):
    x = torch.randn(5, 8, device=device)
    with pytest.raises(ValueError, match="M=5 outside 1..4"):
        gemv(x, torch.randn(4, 8, device=device))
    with pytest.raises(ValueError, match="K mismatch"):
        gemv(x[:1], torch.randn(4, 9, device=device))
