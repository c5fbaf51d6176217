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


@pytest.mark.parametrize("preset", ["tiny-7b", "tiny-40b", "tiny-rw"])
def test_weights_packed_for_serving_give_the_same_logits_and_tokens(preset):
    import copy

    from falconlm.decoding.generate import generate
    from falconlm.errors import FalconError
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    config = FalconConfig.from_preset(preset, initializer_range=0.2, hidden_size=72, num_attention_heads=6)  # widths not a multiple of 32
    model = build_model(config, seed=0).eval()
    packed = copy.deepcopy(model)
    assert lin.pack_for_serving(packed) == 4 * config.num_hidden_layers
    assert all(m.weight.numel() == 0 for m in packed.transformer.h.modules() if getattr(m, "packed", None) is not None)  # released
    ids = torch.randint(12, config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(ids), packed(ids))  # several rows: the same kernel, bit for bit
        assert torch.allclose(model(ids[:1, :1]), packed(ids[:1, :1]), atol=1e-5)  # one row: a GEMV either way
    assert torch.equal(generate(model, ids, max_new_tokens=12, eos_token_id=[]), generate(packed, ids, max_new_tokens=12, eos_token_id=[]))
    with pytest.raises(FalconError, match="packed for serving"):
        packed.state_dict()
