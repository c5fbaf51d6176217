"""QuantLinear: a Falcon linear layer whose weight is stored as 8- or 4-bit integers with group scales.

The weight it stands for, with `perm` the column order of an act-order checkpoint (the input is
gathered by it so that every group is contiguous), is
    W[:, perm][n, k] = scales[n, k // group] * (q[n, k] - zeros[n, k // group]).
The GPTQ on-disk tensors (qweight, qzeros, scales, g_idx) convert to and from this form exactly.
In memory the integers are in the compiled kernel's layout (falconlm.quant.kernels.pack_vnni) with
the scales and integer zero points stored group-major, (groups, outputs padded to 16).

On CPU the input of a layer is quantized on the fly to int8 in groups of `act_group` values along
the width (one scale per group and row, as llama.cpp's Q8_0 does), and the product is integer dot
products on AVX512-VNNI: y = x_hat W^T, with exact integer sums folded in a fixed order, so a
row's output does not depend on the rows it is batched with or the thread count. The portable
build gives the same bits; where the kernels cannot be built a dequantize-and-matmul computes the
same product up to fp32 rounding. `exact_activations` switches a model to fp32 inputs (a
dequantize-and-matmul: slower, for checking a checkpoint against its dequantized weights). Widths
that are not a multiple of 8 keep fp32 inputs. On CUDA, int4 uses torch._weight_int4pack_mm (bf16
inputs) and int8 a dequantize-and-matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from falconlm.errors import FalconError
from falconlm.model.linear import NO_TENSOR, linear
from falconlm.quant import kernels
from falconlm.quant.spec import QuantSpec

# Input values per int8 scale: 32 (llama.cpp's Q8_0 block) where the weight group allows. It is not
# chosen from the layer's width, so a tensor-parallel slice rounds its inputs as the whole layer does.
# 64 or 128 would be up to 15% faster in compute-bound steps (256 rows), but Falcon-7B's 4544 inputs
# split over --tp 2 are no multiple of 64.
ACT_GROUPS = (32, 16, 8)


def act_group_for(packed: bool, group: int) -> int | None:
    """Input values per int8 scale for a layer of this weight group, or None for fp32 inputs (widths the kernel's layout does not take)."""
    return next((a for a in ACT_GROUPS if group % a == 0), None) if packed else None
# Output rows dequantized at a time on the reference path: bounds the fp32 copy (this many x K floats).
DEQUANT_BLOCK_ROWS = 4096


def rtn_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of weight slices w (rows, cols) by min/max, symmetric or with a zero point."""
    w = w.float()
    maxq = spec.maxq
    if spec.sym:
        # Integers zero +- (2^(b-1) - 1): the largest weight lands on a level instead of being clipped
        # (GPTQ's own 2 * amax / maxq clips it by up to one step).
        amax = w.abs().amax(dim=1)
        scale = amax / ((maxq + 1) / 2 - 1)
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / torch.where(scale > 0, scale, 1.0))
        # The v1 GPTQ format stores zero - 1, so a zero point of 0 cannot be written there.
        zero = zero.clamp(1 if spec.checkpoint_format == "gptq" else 0, maxq)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # GPTQ files hold fp16 scales: round here, so a layer computes the same before and after a save.
    return scale.half().float().clamp_min(torch.finfo(torch.float16).tiny), zero


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Stored integers of w (rows, cols) for one (scale, zero) per row."""
    return torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], 0, maxq)


class QuantLinear(nn.Module):
    """y = x W^T (+ bias) with W held as integers, group scales and integer zero points."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group: int, bias: torch.Tensor | None = None, perm: torch.Tensor | None = None):
        """From stored integers (out, in) in the column order of `perm` (or natural), scales/zeros (out, groups)."""
        super().__init__()
        n, k = values.shape
        if k % group or scales.shape != (n, k // group) or zeros.shape != scales.shape:
            raise FalconError(f"quantized weight of shape {(n, k)} does not match scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} for group size {group}")
        self.in_features, self.out_features, self.bits, self.group = k, n, bits, group
        self.packed = k % 8 == 0  # the kernel's layout; other widths keep one integer per byte, row by row
        values = values.to(torch.uint8).contiguous()
        self.register_buffer("q", kernels.pack_vnni(values, bits) if self.packed else values)
        self.register_buffer("scale_t", kernels.pad_columns(scales.float().T, 16).contiguous())
        self.register_buffer("zero_t", kernels.pad_columns(zeros.round().to(torch.int16).T, 16).contiguous())
        # One zero point for all (symmetric weights): the kernel's fold then skips a multiply per group.
        first = self.zero_t[:1, :1]
        self.uniform_zero = int(first) if n and bool((self.zero_t[:, :n] == first).all()) else -1
        self.register_buffer("perm", perm)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.act_group = act_group_for(self.packed, group)
        self._cuda_pack: tuple | None = None
        self._fast: bool | None = None  # whether the compiled kernel takes this layer (set on first use)

    # ----- building -----
    @classmethod
    def from_float(cls, weight: torch.Tensor, spec: QuantSpec, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Round-to-nearest quantization of a float weight (out, in)."""
        n, k = weight.shape
        group = spec.group(k)
        if k % group:
            raise FalconError(f"group size {group} does not divide the layer width {k}")
        w = weight.detach().float().reshape(n * (k // group), group)
        scale, zero = rtn_params(w, spec)
        values = quantize_columns(w, scale, zero, spec.maxq).reshape(n, k)
        return cls(values, scale.view(n, -1), zero.view(n, -1), spec.bits, group, None if bias is None else bias.detach())

    # ----- reading back -----
    @property
    def scales(self) -> torch.Tensor:
        """fp32 scales (out, groups)."""
        return self.scale_t[:, : self.out_features].T

    @property
    def zeros(self) -> torch.Tensor:
        """Integer zero points as fp32 (out, groups)."""
        return self.zero_t[:, : self.out_features].T.float()

    def values(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The stored integers, uint8 (out, in) in stored column order, or only the output rows `rows`."""
        if not self.packed:
            return self.q if rows is None else self.q.index_select(0, rows)
        return kernels.unpack_vnni(self.q, self.bits, self.out_features, self.in_features, rows)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (out, in) in the checkpoint's column order (act order undone)."""
        return self._unpermute(self._dequantize_stored(0, self.out_features))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows W[ids] (*ids.shape, in): the embedding lookup of a tied, quantized head."""
        flat = ids.reshape(-1)
        w = self._scale(self.values(flat).float(), self.scales.index_select(0, flat), self.zeros.index_select(0, flat))
        return self._unpermute(w).view(*ids.shape, self.in_features)

    def _dequantize_stored(self, n0: int, rows: int) -> torch.Tensor:
        """fp32 weights of output rows [n0, n0 + rows) in stored column order."""
        ids = None if (n0, rows) == (0, self.out_features) else torch.arange(n0, n0 + rows, device=self.q.device)
        return self._scale(self.values(ids).float(), self.scales[n0 : n0 + rows], self.zeros[n0 : n0 + rows])

    def _scale(self, values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        """scales * (q - zero), group by group, for integers (rows, in) of any float dtype."""
        n = values.shape[0]
        v = values.view(n, -1, self.group)
        return ((v - zeros[..., None].to(v.dtype)) * scales[..., None].to(v.dtype)).view(n, self.in_features)

    def _unpermute(self, w: torch.Tensor) -> torch.Tensor:
        """Columns back in checkpoint order (act-order layers store them group by group)."""
        return w if self.perm is None else torch.empty_like(w).index_copy_(1, self.perm, w)

    # ----- the product -----
    def _kernel_ok(self) -> bool:
        # Decided once per device (a decode step calls every layer, and this runs on the host each time).
        if self._fast is None:
            self._fast = self.act_group is not None and self.q.device.type == "cpu" and kernels.available()
        return self._fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if x2.device.type == "cuda":
            y = self._cuda_forward(x2)
        else:
            y = self._cpu_forward(x2.float().contiguous()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def kernel_plan(self, x2d: torch.Tensor) -> tuple[list[torch.Tensor], list[int]] | None:
        """How `forward(x2d)` runs when it is one qa8_mm call (the fused decode layer then makes it): its tensors and integers, else None."""
        if x2d.device.type != "cpu" or x2d.dtype != torch.float32 or self.perm is not None or not self._kernel_ok():
            return None
        if self.bias is not None and self.bias.dtype != torch.float32:
            return None
        bias = NO_TENSOR if self.bias is None else self.bias
        return [self.q, self.scale_t, self.zero_t, bias], [1, self.bits, self.group, self.act_group, self.out_features, self.uniform_zero, int(self.bias is not None)]

    def _cpu_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_ok():
            return torch.ops.falconlm_quant.qa8_mm(x, self.q, self.scale_t, self.zero_t, self.bits, self.group, self.act_group, self.out_features, self.uniform_zero)
        if self.act_group is not None:  # no kernel here: the same arithmetic in torch
            x = kernels.quantize_activations(x, self.act_group)
        out = x.new_empty(x.shape[0], self.out_features)
        for n0 in range(0, self.out_features, DEQUANT_BLOCK_ROWS):
            rows = min(DEQUANT_BLOCK_ROWS, self.out_features - n0)
            out[:, n0 : n0 + rows] = linear(x, self._dequantize_stored(n0, rows))
        return out

    def _cuda_forward(self, x: torch.Tensor) -> torch.Tensor:
        # int4: PyTorch's tinygemm kernel (bf16 activations, groups of 32..256, K a multiple of 128 for 8 inner k-tiles).
        if self.bits == 4 and self.group in (32, 64, 128, 256) and self.in_features % 128 == 0 and self.out_features % 8 == 0:
            if self._cuda_pack is None:
                v = self.values().to(torch.int32)
                packed = torch._convert_weight_to_int4pack((v[:, ::2] << 4 | v[:, 1::2]).to(torch.uint8), 8)
                # tinygemm dequantizes (q - 8) * scale + zero, so its zero is (8 - z) * scale.
                sz = torch.stack((self.scales, (8 - self.zeros) * self.scales), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
                self._cuda_pack = (packed, sz)
            packed, sz = self._cuda_pack
            return torch._weight_int4pack_mm(x.to(torch.bfloat16).contiguous(), packed, self.group, sz).to(x.dtype)
        return F.linear(x, self._scale(self.values().to(x.dtype), self.scales, self.zeros))

    def _apply(self, fn, recurse=True):
        self._cuda_pack, self._fast = None, None  # repacked / re-decided for the new device on first use
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        inputs = f"int8 inputs in groups of {self.act_group}" if self.act_group else "fp32 inputs"
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group}{', act-order' if self.perm is not None else ''}, {inputs}, bias={self.bias is not None}"


def exact_activations(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Give every quantized layer of `model` fp32 inputs (enabled) or int8 ones again; returns the model."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.act_group = None if enabled else act_group_for(module.packed, module.group)
            module._fast = None
    return model


class QuantEmbedding(nn.Module):
    """Token embeddings read from a tied, quantized LM head: one table in memory for both uses."""

    def __init__(self, head: QuantLinear, dtype: torch.dtype):
        super().__init__()
        self.head = [head]  # a list, so the head is not registered (and saved) twice
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head[0].rows(ids).to(self.dtype)
