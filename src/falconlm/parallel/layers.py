"""The modules and collectives a tensor-parallel rank runs in place of the whole model's: plain torch.distributed calls.

Each is swapped in by ShardPlan.apply under the attribute name it replaces, so the state dict keys
stay Hugging Face's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from falconlm.model.falcon import FalconLinear
from falconlm.model.linear import linear


def all_reduce(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum over the ranks, in place."""
    dist.all_reduce(t, group=group)
    return t


class RowParallelLinear(FalconLinear):
    """The input-column slice of a linear layer: its output is this rank's partial sum.

    With `reduce` (the sequential RW block) it all-reduces and adds the bias itself; otherwise the
    layer's BlockReduce adds attention's and the MLP's partials, all-reduces once and adds the biases.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, reduce: bool, group: Any = None):
        super().__init__(in_features, out_features, bias=bias)
        self.reduce, self.group = reduce, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _finish_row_parallel(linear(x, self.weight), self.reduce, self.bias, self.group)


class RowParallel(nn.Module):
    """A row-parallel slice held by another layer (a quantized one): its bias taken out, the reduce of RowParallelLinear around it."""

    def __init__(self, inner: nn.Module, reduce: bool, group: Any = None):
        super().__init__()
        self.inner, self.reduce, self.group = inner, reduce, group
        self.bias = inner.bias  # added once, after the all-reduce, not by every rank
        inner.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _finish_row_parallel(self.inner(x), self.reduce, self.bias, self.group)


def _finish_row_parallel(y: torch.Tensor, reduce: bool, bias: torch.Tensor | None, group: Any) -> torch.Tensor:
    """A row-parallel partial sum: left as it is (the block reduces), or all-reduced and biased."""
    if not reduce:
        return y
    y = all_reduce(y, group)
    return y if bias is None else y + bias


class BlockReduce:
    """A parallel block's one all-reduce: the sum of attention's and the MLP's partials, then their biases (FalconDecoderLayer.reduce_outputs)."""

    def __init__(self, layer: nn.Module, group: Any = None):
        self.layer, self.group = layer, group

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        out = all_reduce(out, self.group)
        dense, ffn_out = self.layer.self_attention.dense, self.layer.mlp.dense_4h_to_h
        if dense.bias is not None:
            out = out + (ffn_out.bias + dense.bias)
        return out


class VocabParallelEmbedding(nn.Embedding):
    """Rows [start, start + n) of the embedding: ids outside them look up zeros, and the all-reduce fills in every id."""

    def __init__(self, num_embeddings: int, embedding_dim: int, start: int, group: Any = None):
        super().__init__(num_embeddings, embedding_dim)
        self.start, self.group = start, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside[..., None], 0.0), self.group)


def gather_vocab(local: torch.Tensor, per_rank: int, vocab_size: int, group: Any = None) -> torch.Tensor | None:
    """The full (..., vocab) tensor on rank 0 from every rank's (..., its rows) slice (None elsewhere); slices are padded to `per_rank`."""
    if local.shape[-1] < per_rank:
        local = F.pad(local, (0, per_rank - local.shape[-1]))
    parts = _gather_to_first(local, group)
    return None if parts is None else torch.cat(parts, dim=-1)[..., :vocab_size]


def gather_argmax(values: torch.Tensor, ids: torch.Tensor, group: Any = None) -> torch.Tensor | None:
    """The global argmax per row on rank 0 from each rank's best (value, global id) per row (None elsewhere).

    Ties go to the lowest id, as torch.argmax over the full logits would pick.
    """
    parts = _gather_to_first(torch.stack([values.double(), ids.double()], dim=1), group)  # ids < 2^53: exact in float64
    if parts is None:
        return None
    stacked = torch.stack(parts)  # (ranks, B, 2); rank order is id order
    best = stacked[:, :, 0].argmax(dim=0)  # the first rank holding the maximum
    return stacked[best, torch.arange(stacked.shape[1]), 1].long()


def _gather_to_first(t: torch.Tensor, group: Any = None) -> list[torch.Tensor] | None:
    """Every rank's `t` (same shape) in rank order on the group's first rank; None elsewhere."""
    t = t.contiguous()
    first = dist.get_rank(group) == 0
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))] if first else None
    dist.gather(t, parts, dst=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return parts
