"""The loss with ignored targets (-100): fused LM head and plain, means over the labelled tokens only, gradients too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from falconlm.train.loss import IGNORE_INDEX, linear_cross_entropy, lm_loss


def reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, z: float) -> torch.Tensor:
    """PyTorch's cross_entropy(ignore_index=-100) + z x mean over labelled tokens of logsumexp^2."""
    logits = (h @ w.t()).reshape(-1, w.shape[0])
    keep = t.reshape(-1) != IGNORE_INDEX
    ce = F.cross_entropy(logits, t.reshape(-1), ignore_index=IGNORE_INDEX)
    return ce + z * torch.logsumexp(logits[keep], -1).square().mean()


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_ignored_targets_take_no_part_in_value_or_gradients(z):
    torch.manual_seed(0)
    h = torch.randn(2, 37, 16, requires_grad=True)
    w = (torch.randn(50, 16) * 0.5).requires_grad_(True)
    t = torch.randint(0, 50, (2, 37))
    t[0, :20] = IGNORE_INDEX  # a prompt
    t[1, 30:] = IGNORE_INDEX  # padding
    ref = reference(h, w, t, z)
    (ref * 1.7).backward()
    rh, rw = h.grad.clone(), w.grad.clone()
    for loss_fn in (lambda: linear_cross_entropy(h, w, t, z, chunk=10), lambda: lm_loss(h @ w.t(), t, z)):
        h.grad = w.grad = None
        total, ce = loss_fn()
        (total * 1.7).backward()
        torch.testing.assert_close(total, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ce, F.cross_entropy((h @ w.t()).reshape(-1, 50), t.reshape(-1)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(h.grad, rh, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(w.grad, rw, rtol=1e-5, atol=1e-7)
    assert h.grad[0, :20].abs().max() == 0  # no gradient reaches the ignored positions' hidden states
    # changing an ignored position's hidden state changes nothing
    with torch.no_grad():
        h2 = h.clone()
        h2[1, 35] += 10.0
        assert torch.equal(linear_cross_entropy(h2, w, t, z, chunk=10)[0], linear_cross_entropy(h, w, t, z, chunk=10)[0])


def test_all_ignored_gives_zero_and_a_frozen_head_gets_no_gradient():
    h = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(20, 8)  # frozen (LoRA): no weight gradient is formed
    t = torch.full((3,), IGNORE_INDEX)
    total, ce = linear_cross_entropy(h, w, t, 1e-4)
    total.backward()
    assert total.item() == 0.0 and ce.item() == 0.0 and h.grad.abs().max() == 0
    t = torch.tensor([1, IGNORE_INDEX, 3])
    total, _ = linear_cross_entropy(h, w, t)
    h.grad = None
    total.backward()
    assert w.grad is None and h.grad[1].abs().max() == 0 and h.grad[0].abs().max() > 0
    assert lm_loss(h @ w.t(), torch.full((3,), IGNORE_INDEX))[0].item() == 0.0
