"""Exact greedy picks that read a quarter of the LM head.

Batch-1 decode is bound by memory bandwidth, and the (vocab x hidden) LM head is about 40% of the
bytes a Falcon-7B-shaped model reads per token. For greedy decoding only the argmax is needed, so
we score every token with an int8 copy of the head, bound the error of that score rigorously, and
compute exact fp32 logits only for the tokens whose bound reaches the best lower bound. The pick is
the argmax of exact fp32 logits, the same token a full fp32 head gives.

Error bound for token v with int8 row q_v = round(w_v / s_v), the scale s_v rounded to bf16, and
the hidden state x rounded to bf16 (unit roundoff u = 2^-8):
  |w - q s_bf16|           <= s (1/2 + 127 u)         ~ 0.996 s   per element
  |(x - x_bf16) . q s_bf16| <= ||x||_1 u 127 s (1 + u) ~ 0.498 s ||x||_1
so |x.w_v - approx_v| <= 1.494 s_v ||x||_1 + (bf16 output rounding) + (fp32 accumulation),
which `_ERROR_SCALE` = 2, `_OUTPUT_REL` = 2u and an absolute slack over-approximate; a test
checks the bound against adversarial inputs. If too many candidates survive (a nearly flat
distribution), the caller falls back to the full head.

Where falconlm's own int8 kernel is built (quant/kernels.py) the scores come from it instead, with
fp32 activations and fp32 scales (no bf16 rounding), and the bound is much tighter: the rounding
residual r_v = w_v - q_v s_v of every row is known exactly, so by Cauchy-Schwarz
  |x.w_v - x.q_v s_v| <= ||x||_2 ||r_v||_2
(about 0.3 s ||x||_1 for typical x, against the worst case 0.5 s ||x||_1 above), plus the kernel's
fp32 accumulation (<= 383 (K + 1) 2^-24 s ||x||_1 for unsigned values and a zero point of 128,
doubled) and the output's rounding. On Falcon-shaped heads that leaves a few candidates per row
instead of thousands, and the kernel is 3-10x faster than torch's at 1-16 rows.

Each row's bound is taken as the largest over the vocabulary, so a token can only be the argmax if
it scores within twice that of the row's best score; the exact fp32 logits of the union of those
tokens over all rows hold every row's true argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from falconlm.quant import kernels

_AVAILABLE = hasattr(torch, "_weight_int8pack_mm")
_ERROR_SCALE = 2.0  # >= 1.494, the rounding of w, of its bf16 scale and of the bf16 input (see above)
_OUTPUT_REL = 2.0**-7  # bf16 rounding of the approximate logit, doubled
_MAX_CANDIDATES = 4096
# The int8 scores are compute-bound per row; past this many rows a bf16 copy of the head scored by
# oneDNN's bf16 GEMM (AMX or AVX512-BF16) is faster: bench-7b head, 2 threads, scores of 1 / 16 / 64
# rows take 0.9 / 10.4 / 53 ms in int8, 3.5 / 4.3 / 6.8 in bf16, 6.8 / 16 / 28 for the fp32 head.
_INT8_MAX_ROWS = 12  # engine step at 8 / 16 / 64 rows: 32.5 / 43.2 / 121.6 ms with int8 scores, 35.3 / 40.8 / 87.1 with bf16
# The CPU int8 kernel reads the inner dimension in blocks; for widths that are not a multiple of
# 32 it returns garbage or crashes (measured on torch 2.13 for K = 8, 24, 40, 56, 100, 120), so the
# screen is used only on widths the kernel handles, and each new shape is checked once on a probe.
_K_MULTIPLE = 32
_PROBE_TOLERANCE = 1e-2


class HeadScreen:
    """An int8 shadow of one LM-head weight, for exact argmax over its logits."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        q = torch.round(w / scale[:, None]).clamp_(-127, 127)
        self.ours = _own_kernel(w.shape[1])
        if self.ours:  # unsigned values with a zero point of 128, per output row (one group of the whole width)
            self.q = (q + 128).to(torch.uint8).contiguous()
            self.scale = scale[:, None].contiguous()
            self.sz = (scale * 128)[:, None].contiguous()
            self.scale_bound = scale
            # The exact rounding residual's norm (in float64, rounded up), and the accumulation bound's factor.
            residual = (w.double() - q.double() * scale.double()[:, None]).norm(dim=1)
            self.residual_max = float(residual.max()) * (1 + 1e-6)
            self.accumulation = 2 * 383 * (w.shape[1] + 1) * 2.0**-24 * float(scale.max())
        else:
            self.q = q.to(torch.int8).contiguous()
            self.scale_bf16 = scale.to(torch.bfloat16)
            # The bound must cover the scale actually used (bf16-rounded), so take the larger of the two.
            self.scale_bound = torch.maximum(scale, self.scale_bf16.float())
        self.scale_max = float(self.scale_bound.max())
        self.weight = weight
        self.key = (weight.data_ptr(), weight._version)
        self.bf16: torch.Tensor | None = None  # made on the first batch that is scored in bf16

    @staticmethod
    def bf16_fast() -> bool:
        """Whether this CPU has bf16 matmul hardware (AMX or AVX512-BF16), without which bf16 scores are slower than fp32 ones."""
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()

    def _bf16_copy(self) -> torch.Tensor:
        if self.bf16 is None:
            w = self.weight.detach()
            wb = w.bfloat16()
            # Norms for the bound, in float64 and rounded up: of the rows, of the bf16 rows, of their rounding residuals.
            self.w_norm = float(w.double().norm(dim=1).max()) * (1 + 1e-6)
            self.wb_norm = float(wb.double().norm(dim=1).max()) * (1 + 1e-6)
            self.wb_residual = float((w.double() - wb.double()).norm(dim=1).max()) * (1 + 1e-6)
            self.bf16 = wb
        return self.bf16

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        """Whether screening applies: an fp32 CPU head whose width the int8 kernel handles, on a torch that has it."""
        return (
            _AVAILABLE
            and weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and weight.dim() == 2
            and weight.shape[0] > 0
            and weight.shape[1] % _K_MULTIPLE == 0
        )

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Approximate fp32 logits (B, vocab) from the int8 rows."""
        if self.ours:
            return torch.ops.falconlm_quant.q8_mm(hidden.float().contiguous(), self.q, self.scale, self.sz, self.q.shape[1])
        return torch._weight_int8pack_mm(hidden.to(torch.bfloat16).contiguous(), self.q, self.scale_bf16).float()

    def kernel_agrees(self) -> bool:
        """Run the int8 kernel once on a probe and compare it with the same product done in fp32."""
        if self.ours:  # checked on its own probe when the kernels were loaded
            return True
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, self.q.shape[1], generator=g).to(torch.bfloat16)
        rows = torch.arange(min(self.q.shape[0], 256))
        got = torch._weight_int8pack_mm(x, self.q[rows].contiguous(), self.scale_bf16[rows]).float()
        want = x.float() @ (self.q[rows].float() * self.scale_bf16[rows].float()[:, None]).T
        scale = want.abs().max().clamp_min(1e-6)
        return bool(torch.isfinite(got).all()) and bool(((got - want).abs() <= _PROBE_TOLERANCE * scale).all())

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Exact argmax of hidden @ weight.T per row (B,), or None when the screen cannot narrow it down."""
        approx, low, top, err = self.approximate(hidden)
        # Fall back to the full head when the screen cannot be trusted (a non-finite score, e.g. from
        # an overflowing hidden state) or cannot narrow the pick (a flat distribution).
        if not bool(torch.isfinite(low).all() and torch.isfinite(err).all()):
            return None
        union = _columns_reaching(approx, top - 2 * err)
        if union.numel() > _MAX_CANDIDATES:
            return None
        # A row's true argmax is in the union and nothing in it scores higher; the union is sorted, so
        # ties go to the lowest id, as with the full head.
        exact = F.linear(hidden, self.weight.detach().index_select(0, union))
        return union[exact.argmax(dim=1)]

    def approximate(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Approximate logits (B, vocab; fp32, or bf16 from the bf16 copy), their row minimum and maximum (fp32), and a bound (B,) on each row's error."""
        if hidden.shape[0] > _INT8_MAX_ROWS and self.bf16_fast():
            xb = hidden.bfloat16()
            approx = F.linear(xb, self._bf16_copy())  # left in bf16: comparing it promotes element by element, nothing is copied
            low, top = _row_range(approx)
            return approx, low, top, self.bf16_row_error(hidden, xb, torch.maximum(top.abs(), low.abs()))
        approx = self.scores(hidden)
        low, top = _row_range(approx)
        return approx, low, top, self.row_error(hidden, torch.maximum(top.abs(), low.abs()))

    def bf16_row_error(self, hidden: torch.Tensor, xb: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """(B,) the bound for bf16 scores: x.w - xb.wb = (x - xb).w + xb.(w - wb), each by Cauchy-Schwarz,
        plus fp32 accumulation and the bf16 rounding of the output."""
        xb = xb.float()
        dx = (hidden - xb).norm(dim=1) * (1 + 1e-5)  # the difference is exact in fp32; its norm rounded up
        xn = xb.norm(dim=1) * (1 + 1e-5)
        k = hidden.shape[1]
        return dx * self.w_norm + xn * self.wb_residual + 2 * k * 2.0**-24 * xn * self.wb_norm + magnitude * 2.0**-8 + 1e-30

    def row_error(self, hidden: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """(B,) a bound on |exact - approximate| logit over every token of each row; `magnitude` bounds |approximate|."""
        l1 = hidden.abs().sum(dim=1)
        if self.ours:
            l2 = hidden.norm(dim=1)
            return l2 * self.residual_max + l1 * self.accumulation + magnitude * 2.0**-22 + l1 * 1e-7
        return l1 * (self.scale_max * _ERROR_SCALE + 1e-6) + magnitude * _OUTPUT_REL


def _row_range(approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's minimum and maximum score as fp32 (NaN or infinite where the row holds a non-finite score)."""
    if kernels.f32_available() and approx.is_contiguous():
        both = torch.ops.falconlm_quant.row_range(approx)
        return both[:, 0], both[:, 1]
    low, top = torch.aminmax(approx, dim=1)
    return low.float(), top.float()


def _columns_reaching(approx: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Sorted ids of the vocabulary columns where some row's score reaches that row's threshold."""
    if kernels.f32_available() and approx.is_contiguous():
        return torch.ops.falconlm_quant.columns_reaching(approx, thresholds.float().contiguous()).nonzero().squeeze(1)
    return (approx >= thresholds[:, None]).any(dim=0).nonzero().squeeze(1)


def _own_kernel(width: int) -> bool:
    """Whether falconlm's int8 kernel is built here and takes a row of this width as one group."""
    return width % 16 == 0 and kernels.available()


def screen_for(model: torch.nn.Module) -> HeadScreen | None:
    """The model's cached screen, rebuilt if the head weight changed; None where it does not apply."""
    weight = getattr(model.lm_head, "weight", None)  # a quantized head has none, and needs no screen
    if weight is None or not HeadScreen.supports(weight):
        return None
    screen = getattr(model, "_head_screen", None)
    if screen is None or screen.key != (weight.data_ptr(), weight._version) or screen.weight is not weight:
        screen = HeadScreen(weight)
        if not screen.kernel_agrees():
            screen = _Unusable(weight)
        model._head_screen = screen
    return None if isinstance(screen, _Unusable) else screen


class _Unusable:
    """Remembers that the kernel failed its probe for this weight, so the probe is not rerun every call."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.key = (weight.data_ptr(), weight._version)
