"""The tensor-parallel plan: which slice of every Falcon tensor one rank holds, and the model reshaped to it.

Attention is split by whole KV groups. HF's fused `query_key_value` rows are, per KV group,
[q_0 .. q_{g-1}, k, v] (docs/falcon.md), so the groups of one rank are one contiguous block of rows
and each rank attends with its own query heads over its own K/V: no communication inside attention.
Falcon-7B has a single KV head; there the query heads are split and K/V replicated on every rank.
`dense_h_to_4h` is column-parallel (rows split), `dense` and `dense_4h_to_h` are row-parallel
(input columns split): each rank produces a partial sum of the block's output. In the parallel
block styles (7B, 40B, 180B) attention and MLP partials are added first and all-reduced once per
layer; the sequential RW block needs its attention output before the MLP, so it all-reduces twice.
Embedding and LM head are split by vocabulary rows; LayerNorms and the row-parallel biases (added
once, after the all-reduce) are replicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig

_LAYER_KEY = re.compile(r"transformer\.h\.\d+\.(self_attention\.query_key_value|self_attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)\.(weight|bias|qweight|qzeros|scales|g_idx)")
_VOCAB_KEYS = ("transformer.word_embeddings.weight", "lm_head.weight")
GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def _own(t: torch.Tensor) -> torch.Tensor:
    """`t` copied into storage of its own: safetensors' slices are views of the mapped file (measured with
    safetensors 0.8), and one kept view would keep every page of the file this rank touched resident."""
    return t.clone(memory_format=torch.contiguous_format)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_degree(config: FalconConfig, tp: int) -> None:
    """Raise FalconError when `tp` ranks cannot split this model by whole KV groups (or query heads, for one KV head)."""
    if tp < 1:
        raise FalconError(f"--tp must be >= 1, got {tp}")
    groups, heads = config.stored_kv_heads, config.num_attention_heads
    if groups == 1 and heads % tp:
        raise FalconError(f"--tp {tp} does not divide the {heads} query heads of this multi-query model (its one KV head is copied to every rank); use one of {_divisors(heads)}")
    if groups > 1 and groups % tp:
        raise FalconError(f"--tp {tp} does not divide the model's {groups} KV groups (attention is split by whole groups); use one of {_divisors(groups)}")
    if config.ffn_hidden_size % tp:
        raise FalconError(f"--tp {tp} does not divide the MLP width {config.ffn_hidden_size}; use one of {_divisors(config.ffn_hidden_size)}")


@dataclass(frozen=True)
class ShardPlan:
    """One rank's part of a model: its KV groups, query heads, MLP columns and vocabulary rows."""

    config: FalconConfig
    rank: int
    world: int

    def __post_init__(self) -> None:
        check_degree(self.config, self.world)

    # ----- what this rank holds -----
    @property
    def kv_heads(self) -> int:
        """KV heads (groups) on this rank: the model's share, or the one replicated head of a multi-query model."""
        groups = self.config.stored_kv_heads
        return 1 if groups == 1 else groups // self.world

    @property
    def heads(self) -> slice:
        """The global query heads this rank computes (contiguous: a KV group's queries are adjacent)."""
        n = self.config.num_attention_heads // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    @property
    def ffn(self) -> slice:
        """The MLP's inner columns on this rank."""
        n = self.config.ffn_hidden_size // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    @property
    def vocab_per_rank(self) -> int:
        """Vocabulary rows per rank, rounded up (the last rank holds fewer when the vocabulary does not divide)."""
        return -(-self.config.vocab_size // self.world)

    @property
    def vocab(self) -> slice:
        """The embedding / LM-head rows on this rank."""
        per = self.vocab_per_rank
        start = min(self.rank * per, self.config.vocab_size)
        return slice(start, min(start + per, self.config.vocab_size))

    def qkv_rows(self) -> list[slice]:
        """Row ranges of the fused query_key_value weight this rank holds, in the order they are stacked."""
        d, groups = self.config.head_dim, self.config.stored_kv_heads
        if groups == 1:  # multi-query: this rank's query heads, then the shared k and v
            h = self.config.num_attention_heads
            return [slice(self.heads.start * d, self.heads.stop * d), slice(h * d, (h + 2) * d)]
        rows = (self.config.num_attention_heads // groups + 2) * d  # one group's rows
        return [slice(self.rank * self.kv_heads * rows, (self.rank + 1) * self.kv_heads * rows)]

    # ----- the model, reshaped (on the meta device, before the weights are read) -----
    def apply(self, model: Any) -> None:
        """Give every sharded module of a (meta) model this rank's shape and the collectives of its layer style."""
        from falconlm.parallel.layers import BlockReduce, RowParallelLinear, VocabParallelEmbedding
        from falconlm.model.falcon import FalconLinear

        c = self.config
        if self.quant is not None and self.quant.lm_head:
            raise FalconError("--tp does not split a quantized LM head yet; quantize the checkpoint without --lm-head to load it with --tp")
        qkv_out = sum(s.stop - s.start for s in self.qkv_rows())
        local_heads = self.heads.stop - self.heads.start
        ffn = self.ffn.stop - self.ffn.start
        sequential = c.block_style == "sequential"
        for layer in model.transformer.h:
            attn, mlp = layer.self_attention, layer.mlp
            attn.query_key_value = FalconLinear(c.hidden_size, qkv_out, bias=c.bias)
            attn.num_heads, attn.stored_kv_heads = local_heads, self.kv_heads
            attn.group = local_heads // self.kv_heads
            attn.dense = RowParallelLinear(local_heads * c.head_dim, c.hidden_size, bias=c.bias, reduce=sequential)
            mlp.dense_h_to_4h = FalconLinear(c.hidden_size, ffn, bias=c.bias)
            mlp.dense_4h_to_h = RowParallelLinear(ffn, c.hidden_size, bias=c.bias, reduce=sequential)
            if not sequential:
                layer.reduce_outputs = BlockReduce(layer)
        model.alibi_heads = self.heads
        vocab = self.vocab
        model.transformer.word_embeddings = VocabParallelEmbedding(vocab.stop - vocab.start, c.hidden_size, vocab.start)
        model.lm_head = FalconLinear(c.hidden_size, vocab.stop - vocab.start, bias=False)
        if c.tie_word_embeddings:
            model.lm_head.weight = model.transformer.word_embeddings.weight

    def read(self, key: str, tensor: Any) -> torch.Tensor:
        """This rank's part of checkpoint tensor `key`, read from a safetensors slice (or indexed from a tensor), in storage of its own."""
        return _own(self._part(key, tensor))

    def _outputs(self, module: str) -> list[slice] | None:
        """Output rows this rank holds of a column-parallel layer (None: not column-parallel)."""
        if module.endswith("query_key_value"):
            return self.qkv_rows()
        return [self.ffn] if module.endswith("dense_h_to_4h") else None

    def _inputs(self, module: str) -> slice:
        """Input columns this rank holds of a row-parallel layer."""
        if module.endswith("dense_4h_to_h"):
            return self.ffn
        d = self.config.head_dim
        return slice(self.heads.start * d, self.heads.stop * d)

    def _part(self, key: str, tensor: Any) -> torch.Tensor:
        if key in _VOCAB_KEYS:
            return tensor[self.vocab]
        m = _LAYER_KEY.fullmatch(key)
        if m is None:  # LayerNorms: replicated
            return tensor[:]
        module, kind = m.groups()
        outputs = self._outputs(module)
        if kind in GPTQ_TENSORS:
            return self._gptq_part(key.rsplit(".", 1)[0], kind, tensor, outputs)
        if outputs is not None:  # column-parallel weight or bias: its rows
            parts = [tensor[rows] for rows in outputs]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        if kind == "bias":  # row-parallel bias: added once, after the all-reduce
            return tensor[:]
        return tensor[:, self._inputs(module)]

    # ----- GPTQ checkpoints (falconlm.quant.gptq_format): split along whole groups, never inside one -----
    @property
    def quant(self) -> Any:
        """The checkpoint's QuantSpec, or None for full-precision weights."""
        from falconlm.quant.spec import QuantSpec

        block = self.config.quantization_config
        return None if block is None else QuantSpec.from_config(block)

    def _gptq_part(self, module: str, kind: str, tensor: Any, outputs: list[slice] | None) -> torch.Tensor:
        """This rank's part of one GPTQ tensor of `module` (its full name, for messages)."""
        spec = self.quant
        per = 32 // spec.bits  # integers per int32
        if outputs is not None:  # column-parallel: every input, this rank's output columns
            if kind == "g_idx":
                return tensor[:]
            if kind == "qzeros" and any(s.start % per or s.stop % per for s in outputs):
                raise FalconError(f"{module}'s {spec.bits}-bit zero points are packed {per} outputs to an int32, which --tp {self.world} would split inside one")
            cols = [slice(s.start // per, s.stop // per) for s in outputs] if kind == "qzeros" else outputs
            parts = [tensor[:, c] for c in cols]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        inputs = self._inputs(module)  # row-parallel: this rank's inputs, so their groups
        width = inputs.stop - inputs.start
        if kind == "qweight":
            return tensor[inputs.start // per : inputs.stop // per]
        if spec.group_size == -1:  # one group per output channel: every rank uses the whole row's scale and zero
            return tensor[:] if kind != "g_idx" else tensor[inputs]
        group = spec.group_size
        if spec.desc_act:
            raise FalconError(f"this GPTQ checkpoint was quantized with act order (desc_act): its groups are scattered over {module}'s inputs, so --tp cannot split them; use a checkpoint without act order")
        if inputs.start % group or width % group:
            raise FalconError(f"--tp {self.world} would split {module}'s groups of {group} inputs ({width} inputs per rank); use a TP degree or group size that keeps whole groups on each rank")
        rows = slice(inputs.start // group, inputs.stop // group)
        return tensor[inputs] - rows.start if kind == "g_idx" else tensor[rows]

    def finish(self, model: Any) -> None:
        """After loading: a row-parallel layer the quantization loader replaced gets its reduce and its bias back."""
        from falconlm.parallel.layers import RowParallel, RowParallelLinear

        sequential = self.config.block_style == "sequential"
        for layer in model.transformer.h:
            for parent, name in ((layer.self_attention, "dense"), (layer.mlp, "dense_4h_to_h")):
                inner = getattr(parent, name)
                if not isinstance(inner, (RowParallelLinear, RowParallel)):
                    setattr(parent, name, RowParallel(inner, reduce=sequential))
