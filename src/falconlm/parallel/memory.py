"""Weights and KV cache per rank, by precision and TP degree: the table `falconlm inspect --memory` prints.

Counted from the model itself: each TP degree's ShardPlan is applied to a meta-device model and its
parameters are summed, so what is replicated (LayerNorms, row-parallel biases, Falcon-7B's one KV
head) is counted on every rank exactly as the plan places it. Quantized rows count what a loaded
QuantLinear holds: the block linear layers as int8 (per output channel) or int4 (groups of 128
inputs), each group with an fp32 scale and an int16 zero point; embeddings, LayerNorms, biases and
the LM head stay bf16. The KV cache is bf16 in every row (quantization is weight-only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.parallel.plan import ShardPlan, check_degree

PRECISIONS = {"bf16": None, "int8": (8, None), "int4": (4, 128)}  # name -> (bits, group size; None = per output channel)
QUANTIZED = ("query_key_value.weight", "self_attention.dense.weight", "dense_h_to_4h.weight", "dense_4h_to_h.weight")
DEGREES = (1, 2, 4, 8)
RELEASED = ("falcon-rw-1b", "falcon-rw-7b", "falcon-7b", "falcon-40b", "falcon-180b")


@dataclass(frozen=True)
class RankMemory:
    """One rank's share of one model at one precision and TP degree."""

    precision: str
    tp: int
    weight_bytes: int
    kv_bytes_per_token: int


def _param_bytes(name: str, shape: torch.Size, precision: str) -> int:
    n = shape.numel()
    spec = PRECISIONS[precision]
    if spec is None or not name.endswith(QUANTIZED):
        return 2 * n
    bits, group = spec
    out_features, in_features = shape
    groups = 1 if group is None else -(-in_features // group)
    return n * bits // 8 + groups * out_features * 6  # integers, then an fp32 scale and an int16 zero point per group


def rank_memory(config: FalconConfig, tp: int, precisions: tuple[str, ...] = tuple(PRECISIONS)) -> list[RankMemory]:
    """Bytes rank 0 (the most loaded rank) holds for weights, and its KV cache bytes per token, at each precision."""
    from falconlm.model.falcon import FalconForCausalLM

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise FalconError(f"unknown precision {unknown[0]!r}; use one of {', '.join(PRECISIONS)}")
    plan = ShardPlan(config, 0, tp)
    with torch.device("meta"):
        model = FalconForCausalLM(config)
        plan.apply(model)
    params = dict(model.named_parameters())  # the tied head is the embedding, listed once
    kv = 2 * config.num_hidden_layers * plan.kv_heads * config.head_dim * 2
    return [RankMemory(p, tp, int(sum(_param_bytes(n, t.shape, p) for n, t in params.items())), kv) for p in precisions]


def degrees(config: FalconConfig) -> list[int]:
    """The TP degrees of DEGREES this model splits into."""
    out = []
    for tp in DEGREES:
        try:
            check_degree(config, tp)
        except FalconError:
            continue
        out.append(tp)
    return out


def memory_table(name: str, config: FalconConfig, gpu_bytes: float) -> list[str]:
    """Lines of the table for one model: per precision and TP degree, weights and KV per rank, and the KV tokens left room for."""
    gib = 2**30
    lines = [f"{'model':<14} {'precision':<9} {'TP':>3} {'weights/rank':>13} {'KV/token/rank':>14} {'KV tokens in the rest of ' + _size(gpu_bytes):>30}"]
    rows = sorted((m for tp in degrees(config) for m in rank_memory(config, tp)), key=lambda m: (list(PRECISIONS).index(m.precision), m.tp))
    for m in rows:
        left = gpu_bytes - m.weight_bytes
        room = f"{left / m.kv_bytes_per_token:,.0f}" if left > 0 else "weights do not fit"
        lines.append(f"{name:<14} {m.precision:<9} {m.tp:>3} {m.weight_bytes / gib:>9.1f} GiB {m.kv_bytes_per_token / 1024:>10.1f} KiB {room:>30}")
    skipped = [tp for tp in DEGREES if tp not in degrees(config)]
    if skipped:
        why = f"its {config.num_attention_heads} query heads" if config.stored_kv_heads == 1 else f"its {config.stored_kv_heads} KV groups"
        lines.append(f"{'':<14} (TP {', '.join(map(str, skipped))}: does not divide {why})")
    return lines


def _size(n: float) -> str:
    return f"{n / 1e9:.0f} GB"
