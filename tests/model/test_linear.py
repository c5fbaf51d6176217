"""The oneDNN linear path: same values and gradients as F.linear, and it steps aside where it must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from falconlm.model import linear as lin

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
