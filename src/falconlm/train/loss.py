"""Causal-LM loss with PaLM-style z-loss, computed in fp32 from one log-sum-exp."""

from __future__ import annotations

import torch


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, cross_entropy): mean next-token CE plus z_loss x mean(logsumexp(logits)^2).

    logits (B, T, V) already aligned with targets (B, T). The log-sum-exp is shared by both terms,
    so z-loss costs one extra square and mean.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce = (lse - target_logit).mean()
    if z_loss:
        return ce + z_loss * lse.square().mean(), ce
    return ce, ce
