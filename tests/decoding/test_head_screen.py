"""The int8 screen of the LM head: its error bound holds and its pick is the exact fp32 argmax."""

from __future__ import annotations

import pytest
import torch

from falconlm.decoding import head_screen
from falconlm.decoding.generate import generate
from falconlm.decoding.head_screen import HeadScreen, screen_for
from falconlm.model.config import FalconConfig
from falconlm.testing import make_pair

pytestmark = pytest.mark.skipif(not head_screen._AVAILABLE, reason="this torch has no int8 weight kernel")


@pytest.mark.parametrize("kernel", ["falconlm", "torch", "bf16"])
def test_error_bound_holds_on_adversarial_inputs(kernel, monkeypatch):
    from falconlm.quant import kernels

    if kernel == "falconlm" and not kernels.available():
        pytest.skip("falconlm's int8 kernel could not be built here")
    if kernel == "torch":
        monkeypatch.setattr(head_screen, "_own_kernel", lambda width: False)
    monkeypatch.setattr(head_screen, "_INT8_MAX_ROWS", 0 if kernel == "bf16" else 64)
    monkeypatch.setattr(HeadScreen, "bf16_fast", staticmethod(lambda: kernel == "bf16"))  # the bound holds whether or not bf16 is fast
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3000, 256, generator=g) * 0.02
    weight[:7] *= 40  # rows with large scales
    weight[7] = 0.0  # an all-zero row
    screen = HeadScreen(weight)
    assert screen.ours == (kernel != "torch")
    for trial in range(30):
        x = torch.randn(4, 256, generator=g) * 10 ** (trial % 5 - 2)
        if trial % 3 == 1:
            x = torch.sign(weight[trial : trial + 4]) * x.abs()  # aligned with a row's signs: worst case for the l1 bound
        elif trial % 3 == 2 and screen.ours and kernel != "bf16":
            # Along the rows' own rounding residuals: where Cauchy-Schwarz is an equality.
            residual = weight[trial : trial + 4] - (screen.q[trial : trial + 4].float() - 128) * screen.scale[trial : trial + 4]
            x = residual / residual.norm(dim=1, keepdim=True).clamp_min(1e-30) * x.norm(dim=1, keepdim=True)
        approx, _, _, bound = screen.approximate(x)
        assert ((x.double() @ weight.double().T - approx).abs() <= bound[:, None]).all()
        assert torch.equal(screen.argmax(x), (x @ weight.T).argmax(dim=1))


def test_flat_logits_fall_back_to_the_full_head(monkeypatch):
    weight = torch.ones(5000, 64) * 0.01
    weight += torch.randn(5000, 64) * 1e-6
    monkeypatch.setattr(head_screen, "_MAX_CANDIDATES", 100)
    assert HeadScreen(weight).argmax(torch.randn(2, 64)) is None


def test_screened_greedy_equals_full_head_and_screen_is_refreshed():
    config = FalconConfig.from_preset("tiny-40b")
    model, _ = make_pair(config)
    ids = torch.randint(12, config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(2))
    full = generate(model, ids, max_new_tokens=20, eos_token_id=[], screen_head=False)
    assert torch.equal(generate(model, ids, max_new_tokens=20, eos_token_id=[]), full)
    first = screen_for(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # in-place edit: the cached int8 copy must not be reused
    assert screen_for(model) is not first


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_screen_passes_give_torch_answers(dtype):
    # The compiled row range and column union against aminmax and (>=).any, with a vocabulary that is
    # not a multiple of 16, rows holding NaN or infinity, and thresholds that some columns equal exactly.
    from falconlm.quant import kernels

    if not kernels.f32_available():
        pytest.skip("falconlm's kernels are not built here")
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(5, 1003, generator=g) * 3).to(dtype)
    scores[1, 17] = float("nan")
    scores[3, 1002] = float("inf")
    lo, hi = head_screen._row_range(scores)
    want_lo, want_hi = (t.float() for t in torch.aminmax(scores, dim=1))
    finite = torch.tensor([True, False, True, False, True])
    assert torch.equal(torch.isfinite(lo) & torch.isfinite(hi), finite)
    assert torch.equal(lo[finite], want_lo[finite]) and torch.equal(hi[finite], want_hi[finite])
    thresholds = scores.float()[torch.arange(5), torch.tensor([3, 500, 1000, 7, 999])]  # each reached exactly by one column
    thresholds[0] = float("nan")  # a NaN threshold selects nothing, as (>=) does
    got = head_screen._columns_reaching(scores, thresholds)
    want = (scores >= thresholds[:, None]).any(dim=0).nonzero().squeeze(1)
    assert torch.equal(got, want) and got.numel() > 3


def test_greedy_pick_gives_torch_indices():
    # The compiled row argmax against torch's max(dim): ties (the first one wins, -0 equals +0), a NaN
    # anywhere (the first NaN wins), rows of -inf and +inf, and widths that are not a multiple of 16.
    from falconlm.decoding.sampling import greedy_tokens
    from falconlm.quant import kernels

    if not kernels.f32_available():
        pytest.skip("falconlm's kernels are not built here")
    g = torch.Generator().manual_seed(0)
    for width in (1, 5, 16, 17, 1003, 65024):
        scores = torch.randn(9, width, generator=g)
        scores[1] = float("-inf")
        scores[2, width // 2 :] = scores[2].max() + 1  # a tie: the first of the equal maxima
        scores[3, -1] = float("nan")
        scores[4, 0] = float("nan")
        scores[4, width // 3] = float("nan")
        scores[5, -1] = float("inf")
        scores[6] = 0.0
        scores[6, ::2] = -0.0  # -0 and +0 compare equal: index 0 either way
        scores[7] = scores[7].round()  # many exact ties
        got = greedy_tokens(scores)
        assert torch.equal(got, scores.max(dim=-1).indices), width
    assert torch.equal(greedy_tokens(scores[:, ::2]), scores[:, ::2].max(dim=-1).indices)  # a strided view
    assert greedy_tokens(torch.zeros(0, 7)).shape == (0,)
