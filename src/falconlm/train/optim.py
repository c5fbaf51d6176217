"""AdamW with Falcon's weight-decay split: decay weight matrices, not norms, biases or embeddings."""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING_NAMES = ("word_embeddings", "wte", "embed_tokens")


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups: 2-D+ weight matrices with decay, everything else (norms, biases, embeddings) without.

    Tied parameters (lm_head = word embeddings) appear once, under the embedding's name.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_embedding = any(part in name for part in EMBEDDING_NAMES)
        if p.ndim >= 2 and (decay_embeddings or not is_embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the model's param groups with the fused kernel (one pass per tensor, CPU and CUDA,
    DTensor shards included; ~8x faster than the for-loop kernel on CPU), or `foreach` if fused=False."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kind)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the same LR on every group."""
    for g in optimizer.param_groups:
        g["lr"] = lr
