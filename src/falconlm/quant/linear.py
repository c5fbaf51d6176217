"""QuantLinear: a Falcon linear layer whose weight is stored as 8- or 4-bit integers with group scales.

In memory a weight is `q` (uint8 integers; 4-bit ones two to a byte in the CPU kernel's layout),
`scales` and `zeros` of shape (out, groups) and, for act-order checkpoints, `perm`, the column
order that makes every group contiguous (the input is gathered by it). The weight it stands for is
    W[:, perm][n, k] = scales[n, k // group] * (q[n, k] - zeros[n, k // group]).
The GPTQ on-disk tensors (qweight, qzeros, scales, g_idx) convert to and from this form exactly.

Products run on the compiled CPU kernels for small batches (decode), on a block-wise dequantize
then the fp32 GEMM for large ones (prefill, which is compute-bound), and on a dequantize-and-matmul
reference wherever a kernel's preconditions fail; on CUDA, int4 uses torch._weight_int4pack_mm and
int8 a dequantize-and-matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from falconlm.errors import FalconError
from falconlm.model.linear import linear
from falconlm.quant import kernels
from falconlm.quant.spec import QuantSpec

# Rows of input up to which the weight-streaming kernel beats dequantize + fp32 GEMM with the weights
# coming from memory (3,072 x 768 layers, one thread: 16 rows 7.7 ms vs 14.6 ms, 32 rows 18.8 vs 18.3).
GEMV_MAX_ROWS = 24
# Output rows dequantized at a time on the GEMM path: bounds the fp32 copy (this many x K floats).
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
    """y = x W^T (+ bias) with W held as integers, group scales and zero points."""

    def __init__(self, in_features: int, out_features: int, bits: int, group: int, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None = None, perm: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        self.packed = bits == 4 and in_features % 64 == 0  # else 4-bit integers are kept one per byte
        self.register_buffer("q", q)
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("zeros", zeros.float().contiguous())
        self.register_buffer("sz", (self.scales * self.zeros).contiguous())
        self.register_buffer("perm", perm)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._cuda_pack: tuple | None = None
        self._fast: bool | None = None  # whether the compiled CPU kernels take this layer (set on first use)
        self._ops: tuple = ()  # (matmul, dequantize) kernels for this bit width, looked up with _fast

    # ----- building -----
    @classmethod
    def from_ints(cls, values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group: int, bias: torch.Tensor | None = None, perm: torch.Tensor | None = None) -> "QuantLinear":
        """From stored integers (out, in) in the column order of `perm` (or natural), scales/zeros (out, groups)."""
        n, k = values.shape
        if k % group or scales.shape != (n, k // group) or zeros.shape != scales.shape:
            raise FalconError(f"quantized weight of shape {(n, k)} does not match scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} for group size {group}")
        values = values.to(torch.uint8).contiguous()
        q = kernels.pack_nibbles(values) if bits == 4 and k % 64 == 0 else values
        return cls(k, n, bits, group, q, scales, zeros, bias, perm)

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
        return cls.from_ints(values, scale.view(n, -1), zero.view(n, -1), spec.bits, group, None if bias is None else bias.detach())

    # ----- reading back -----
    def values(self) -> torch.Tensor:
        """The stored integers, uint8 (out, in), in stored column order."""
        return kernels.unpack_nibbles(self.q) if self.packed else self.q

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (out, in) in the checkpoint's column order (act order undone)."""
        return self._unpermute(self._dequantize_stored(0, self.out_features))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows W[ids] (*ids.shape, in): the embedding lookup of a tied, quantized head."""
        flat = ids.reshape(-1)
        q = self.q.index_select(0, flat)
        values = kernels.unpack_nibbles(q) if self.packed else q
        w = self._scale(values.float(), self.scales.index_select(0, flat), self.sz.index_select(0, flat))
        return self._unpermute(w).view(*ids.shape, self.in_features)

    def _dequantize_stored(self, n0: int, rows: int) -> torch.Tensor:
        """fp32 weights of output rows [n0, n0 + rows) in stored column order."""
        if self._kernel_ok():
            return self._ops[1](self.q, self.scales, self.sz, self.group, n0, rows)
        rows_ = slice(n0, n0 + rows)
        return self._scale(self.values()[rows_].float(), self.scales[rows_], self.sz[rows_])

    def _scale(self, values: torch.Tensor, scales: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
        """scales * q - scales * zero, group by group, for integers (rows, in) of any float dtype."""
        n = values.shape[0]
        v = values.view(n, -1, self.group)
        return (v * scales[..., None].to(v.dtype) - sz[..., None].to(v.dtype)).view(n, self.in_features)

    def _unpermute(self, w: torch.Tensor) -> torch.Tensor:
        """Columns back in checkpoint order (act-order layers store them group by group)."""
        return w if self.perm is None else torch.empty_like(w).index_copy_(1, self.perm, w)

    # ----- the product -----
    def _kernel_ok(self) -> bool:
        # Decided once per device (a decode step calls every layer, and this runs on the host each time).
        if self._fast is None:
            if self.q.device.type != "cpu" or not kernels.available():
                self._fast = False
            else:
                self._fast = self.group % 16 == 0 if self.bits == 8 else self.packed and (self.group == 32 or self.group % 64 == 0)
                ops = torch.ops.falconlm_quant
                self._ops = (ops.q8_mm, ops.q8_dequantize) if self.bits == 8 else (ops.q4_mm, ops.q4_dequantize)
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

    def _cpu_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_ok() and x.shape[0] <= GEMV_MAX_ROWS:
            return self._ops[0](x, self.q, self.scales, self.sz, self.group)
        # Many rows: compute-bound, so the fp32 GEMM on a dequantized block beats a weight-streaming kernel.
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
        return F.linear(x, self._scale(self.values().to(x.dtype), self.scales, self.sz))

    def _apply(self, fn, recurse=True):
        self._cuda_pack, self._fast = None, None  # repacked / re-decided for the new device on first use
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group}{', act-order' if self.perm is not None else ''}, bias={self.bias is not None}"


class QuantEmbedding(nn.Module):
    """Token embeddings read from a tied, quantized LM head: one table in memory for both uses."""

    def __init__(self, head: QuantLinear, dtype: torch.dtype):
        super().__init__()
        self.head = [head]  # a list, so the head is not registered (and saved) twice
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head[0].rows(ids).to(self.dtype)
