"""GPTQ (Frantar et al., 2022): quantize a weight column by column, pushing each column's rounding
error onto the columns not yet quantized through the inverse Hessian of the layer's inputs.

H = 2 X^T X / n over the calibration inputs X of the layer; with act order the columns go in
order of decreasing H diagonal and each run of `group` columns in that order shares a scale.
The blocked update (128 columns at a time) and the Cholesky form of H^-1 follow the paper.
"""

from __future__ import annotations

import torch

from falconlm.errors import FalconError
from falconlm.quant.linear import QuantLinear, quantize_columns, rtn_params
from falconlm.quant.spec import QuantSpec


class HessianAccumulator:
    """Running 2 X^T X / n of a layer's inputs, fed batch by batch (a forward hook calls `add`)."""

    def __init__(self, width: int):
        self.h = torch.zeros(width, width, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold in inputs of shape (..., width)."""
        x = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        m = x.shape[0]
        if m == 0:
            return
        self.h.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.h.addmm_(x.T, x)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, bias: torch.Tensor | None = None, block: int = 128) -> tuple[QuantLinear, float]:
    """GPTQ-quantize weight (out, in) given its input Hessian; returns the layer and the Hessian-weighted error tr((W-Q) H (W-Q)^T) / out."""
    w = weight.detach().float().clone()
    n, k = w.shape
    group = spec.group(k)
    if k % group:
        raise FalconError(f"group size {group} does not divide the layer width {k}")
    h = hessian.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if spec.desc_act:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h += torch.eye(k) * spec.damp_percent * torch.mean(torch.diag(h))
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise FalconError("the calibration Hessian is not positive definite even after dampening; give more calibration text or raise damp_percent") from None
    q = torch.zeros_like(w)
    scales = torch.zeros(n, k // group)
    zeros = torch.zeros(n, k // group)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                # This group's parameters from the weights as they stand now, errors of earlier columns folded in.
                g = col // group
                s, z = rtn_params(torch.cat((w1[:, i:], w[:, i2:]), dim=1)[:, :group], spec)
                scales[:, g], zeros[:, g] = s, z
            s, z = scales[:, col // group], zeros[:, col // group]
            qi = quantize_columns(w1[:, i : i + 1], s, z, spec.maxq)[:, 0]
            q[:, col] = qi
            deq = s * (qi - z)
            e = (w1[:, i] - deq) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    layer = QuantLinear(q, scales, zeros, spec.bits, group, bias, perm)
    return layer, hessian_error(weight, layer, hessian)


def hessian_error(weight: torch.Tensor, layer: QuantLinear, hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T) / out of any quantized layer, for comparing RTN with GPTQ on equal terms."""
    d = weight.detach().float() - layer.dequantize()
    return float(torch.einsum("nk,kl,nl->", d, hessian.float(), d) / weight.shape[0])
