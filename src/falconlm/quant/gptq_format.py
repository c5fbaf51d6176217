"""The GPTQ safetensors layout, both ways, for one linear layer of `out` x `in` weights.

As AutoGPTQ defined it and transformers, vLLM, TGI and gptqmodel read it, with b bits and
p = 32 / b integers per int32 (the lowest bits hold the first):
  qweight  int32 (in / p, out)     integer of weight (n, k) in row k // p, bits b * (k % p)
  qzeros   int32 (groups, out / p)  zero point of (group, n) in column n // p; the 'gptq' (v1)
                                    format stores zero - 1, 'gptq_v2' the zero itself
  scales   fp16  (groups, out)
  g_idx    int32 (in,)              group of each input column; k // group_size unless act order
  bias     fp16  (out,)             when the layer has one
and the weight is scales[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]).
"""

from __future__ import annotations

import torch

from falconlm.errors import FalconError
from falconlm.quant.linear import QuantLinear
from falconlm.quant.spec import QuantSpec

SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "bias")


def _pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(R, C) integers < 2**bits -> int32 (R * bits / 32, C), packed along the rows."""
    per = 32 // bits
    r, c = values.shape
    v = values.to(torch.int64).view(r // per, per, c)
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    packed = (v << shifts).sum(dim=1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of _pack_rows: int32 (R', C) -> int64 (R' * 32 / bits, C)."""
    per = 32 // bits
    p = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    return ((p[:, None, :] >> shifts) & (2**bits - 1)).reshape(-1, packed.shape[1])


def to_gptq(layer: QuantLinear, spec: QuantSpec) -> dict[str, torch.Tensor]:
    """The GPTQ tensors of one layer (keys are the suffixes after the module name)."""
    n, k, group = layer.out_features, layer.in_features, layer.group
    if k % (32 // layer.bits) or n % (32 // layer.bits):
        raise FalconError(f"a {n} x {k} layer cannot be written in the {layer.bits}-bit GPTQ layout: both sizes must be multiples of {32 // layer.bits}")
    values = layer.values().to(torch.int64)  # (n, k) in stored column order
    if layer.perm is not None:
        values = torch.empty_like(values).index_copy_(1, layer.perm, values)
        g_idx = torch.empty(k, dtype=torch.int32).index_copy_(0, layer.perm, (torch.arange(k) // group).to(torch.int32))
    else:
        g_idx = (torch.arange(k) // group).to(torch.int32)
    zeros = layer.zeros.round().to(torch.int64).T  # (groups, n)
    if spec.checkpoint_format == "gptq":
        zeros = zeros - 1
    out = {
        "qweight": _pack_rows(values.T.contiguous(), layer.bits),
        "qzeros": _pack_rows((zeros & (2**layer.bits - 1)).T.contiguous(), layer.bits).T.contiguous(),
        "scales": layer.scales.T.to(torch.float16).contiguous(),
        "g_idx": g_idx,
    }
    if layer.bias is not None:
        out["bias"] = layer.bias.detach().to(torch.float16)
    return out


def from_gptq(tensors: dict[str, torch.Tensor], spec: QuantSpec, in_features: int, out_features: int, name: str) -> QuantLinear:
    """A QuantLinear from one layer's GPTQ tensors, every shape checked against the model's config."""
    bits, per = spec.bits, 32 // spec.bits
    group = spec.group(in_features)
    for key in ("qweight", "qzeros", "scales"):
        if key not in tensors:
            raise FalconError(f"quantized layer {name} is missing its {key!r} tensor")
    if in_features % group:
        raise FalconError(f"group size {group} does not divide the {in_features} inputs of {name}")
    groups = in_features // group
    expect = {"qweight": (in_features // per, out_features), "qzeros": (groups, out_features // per), "scales": (groups, out_features)}
    for key, shape in expect.items():
        if tuple(tensors[key].shape) != shape:
            raise FalconError(f"{name}.{key} has shape {tuple(tensors[key].shape)}, but a {bits}-bit layer of {out_features} x {in_features} with group size {group} needs {shape}")
    for key in ("qweight", "qzeros"):
        if tensors[key].dtype != torch.int32:
            raise FalconError(f"{name}.{key} must be int32 packed integers, not {str(tensors[key].dtype).removeprefix('torch.')}")
    values = _unpack_rows(tensors["qweight"], bits).T  # (n, k), checkpoint column order
    zeros = _unpack_rows(tensors["qzeros"].T.contiguous(), bits).T.float()  # (groups, n)
    if spec.checkpoint_format == "gptq":
        zeros = zeros + 1
    scales = tensors["scales"].float()
    perm = None
    g_idx = tensors.get("g_idx")
    if g_idx is not None:
        if tuple(g_idx.shape) != (in_features,):
            raise FalconError(f"{name}.g_idx has shape {tuple(g_idx.shape)}, but the layer has {in_features} inputs")
        g_idx = g_idx.to(torch.int64)
        natural = torch.arange(in_features) // group
        if not torch.equal(g_idx, natural):
            counts = torch.bincount(g_idx.clamp(0, groups - 1), minlength=groups) if bool(((g_idx >= 0) & (g_idx < groups)).all()) else None
            if counts is None or not bool((counts == group).all()):
                raise FalconError(f"{name}.g_idx does not assign exactly {group} inputs to each of the {groups} groups")
            perm = torch.argsort(g_idx, stable=True)  # act order: gather the inputs so each group is contiguous
            values = values.index_select(1, perm)
    bias = tensors.get("bias")
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise FalconError(f"{name}.bias has shape {tuple(bias.shape)}, but the layer has {out_features} outputs")
    return QuantLinear(values, scales.T.contiguous(), zeros.T.contiguous(), bits, group, None if bias is None else bias, perm)
