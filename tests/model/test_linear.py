"""The oneDNN linear path: same values and gradients as F.linear, and it steps aside where it must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from falconlm.model import linear as lin
from falconlm.quant import kernels

pytestmark = pytest.mark.skipif(not lin.AVAILABLE, reason="torch built without oneDNN")


def test_forward_and_gradients_match_f_linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 48, generator=g, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(40, 48, generator=g))
    y = lin.linear(x, w)
    upstream = torch.randn(3, 5, 40, generator=g)
    (y * upstream).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    y2 = F.linear(x2, w2)
    (y2 * upstream).sum().backward()
    assert torch.allclose(y, y2, atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(w.grad, w2.grad, atol=1e-4)
    assert torch.allclose(lin.matmul_nt(x2.detach()[0], w2.detach()), x2.detach()[0] @ w2.detach().t(), atol=1e-5)


def test_standard_path_under_autocast_and_for_other_dtypes():
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin.linear(x, w).dtype == torch.bfloat16  # autocast still applies
    assert lin.linear(x.double(), w.double()).dtype == torch.float64
    assert lin.linear(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- the few-row fp32 kernel

needs_kernel = pytest.mark.skipif(not kernels.f32_available(), reason="falconlm's fp32 kernel is not built here (no compiler or no AVX-512)")


@needs_kernel
@pytest.mark.parametrize("n,k", [(5, 37), (37, 48), (896, 768), (3, 1), (129, 100), (64, 3072)])
def test_few_row_kernel_matches_float64_on_odd_shapes(n, k):
    # Outputs not a multiple of the 4-output block, inputs not a multiple of 16, every row count to SMALL_ROWS.
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g)
    for m in range(1, lin.SMALL_ROWS + 1):
        x = torch.randn(m, k, generator=g)
        got = torch.ops.falconlm_quant.f32_mm(x, w)
        want = x.double() @ w.double().T
        # fp32 sums of k products: |error| <= k * 2^-24 * sum |x||w| (a loose form of the standard bound)
        bound = 2 * k * 2.0**-24 * (x.double().abs() @ w.double().abs().T) + 1e-30
        assert ((got.double() - want).abs() <= bound).all(), (m, n, k)


@needs_kernel
def test_a_row_gets_the_same_bits_alone_batched_and_on_one_thread():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3072, 768, generator=g)
    x = torch.randn(lin.SMALL_ROWS, 768, generator=g)
    batched = lin.linear(x, w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = lin.linear(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batched, single)
    for m in (1, 2, 7, 13):
        assert torch.equal(lin.linear(x[:m], w), batched[:m])
    assert torch.equal(lin.linear(x[5:6].clone(), w), batched[5:6])


@needs_kernel
def test_kernel_used_only_where_it_applies(kernel_calls):
    calls = kernel_calls("f32_mm")
    w = torch.randn(40, 48)
    lin.linear(torch.randn(3, 2, 48), w)  # 6 rows: the kernel
    lin.linear(torch.randn(lin.SMALL_ROWS + 1, 48), w)  # too many rows: oneDNN
    lin.linear(torch.randn(2, 48), w.t().contiguous().t())  # a non-contiguous weight: oneDNN
    lin.linear(torch.randn(2, 48, requires_grad=True), w)  # autograd: oneDNN's Function
    with torch.no_grad():
        lin.linear(torch.randn(4, 96)[:, ::2], w)  # a strided input is made contiguous for the kernel
    assert calls == [(6, 48), (4, 48)]
    y = lin.linear(torch.randn(3, 2, 48), w)
    assert y.shape == (3, 2, 40)
