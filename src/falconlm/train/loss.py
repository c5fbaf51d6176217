"""Causal-LM loss with PaLM-style z-loss, computed in fp32 from one log-sum-exp."""

from __future__ import annotations

import torch

from falconlm.model.linear import matmul_nt

IGNORE_INDEX = -100  # a target that takes no part in the loss (prompt tokens, padding), as in PyTorch and transformers


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0, ignore_index: int | None = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, cross_entropy): mean next-token CE plus z_loss x mean(logsumexp(logits)^2).

    logits (B, T, V) already aligned with targets (B, T). The log-sum-exp is shared by both terms,
    so z-loss costs one extra square and mean. Targets equal to ignore_index take no part: both
    means run over the other tokens only (0 when there are none).
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    if ignore_index is not None and bool((targets == ignore_index).any()):
        keep = targets != ignore_index
        n = keep.sum().clamp_min(1)
        target_logit = logits.gather(-1, targets.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)
        ce = torch.where(keep, lse - target_logit, 0.0).sum() / n
        if z_loss:
            return ce + z_loss * torch.where(keep, lse.square(), 0.0).sum() / n, ce
        return ce, ce
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce = (lse - target_logit).mean()
    if z_loss:
        return ce + z_loss * lse.square().mean(), ce
    return ce, ce


class _LinearCrossEntropy(torch.autograd.Function):
    """LM head + cross-entropy + z-loss in chunks of tokens, with the gradients formed in the forward pass.

    Never materialises the (tokens x vocab) logits of the whole batch, nor autograd's copies of them
    (softmax, one-hot scatter, their sum): per chunk one logits buffer is turned into its own
    gradient in place (softmax x (1 + 2·z·lse) − one-hot) / N and fed to the two matmuls right away.
    Same FLOPs as autograd, far fewer passes over vocab-sized memory.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, z_loss: float, chunk: int, compute_dtype, ignore_index):  # noqa: D102
        rows = n = hidden.shape[0]
        need_w = ctx.needs_input_grad[1]
        need_grad = ctx.needs_input_grad[0] or need_w
        # Ignored targets: their rows add nothing to the sums or the gradients, and the means divide
        # by the tokens that count. With none ignored this is the plain path below, op for op.
        keep = None
        if ignore_index is not None:
            valid = targets != ignore_index
            n_valid = int(valid.sum())
            if n_valid < rows:
                keep, n = valid, max(n_valid, 1)
        cd = compute_dtype or weight.dtype
        w = weight.to(cd)
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        ce_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        z_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        # w.T materialised once lets the grad_h GEMM run on the fast CPU path too (model/linear.py).
        w_t = w.t().contiguous() if need_grad and cd == torch.float32 and w.device.type == "cpu" else None
        for s in range(0, rows, chunk):
            h, t = hidden[s : s + chunk].to(cd), targets[s : s + chunk]
            k = keep[s : s + chunk] if keep is not None else None
            if k is not None:
                t = t.masked_fill(~k, 0)
            logits = matmul_nt(h, w).float()
            lse = torch.logsumexp(logits, dim=-1)
            token_ce, lse_sq = lse - logits.gather(1, t[:, None]).squeeze(1), lse.square()
            if k is not None:
                token_ce, lse_sq = torch.where(k, token_ce, 0.0), torch.where(k, lse_sq, 0.0)
            ce_sum += token_ce.sum(dtype=torch.float64)
            z_sum += lse_sq.sum(dtype=torch.float64)
            if need_grad:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                g.mul_(((1.0 + 2.0 * z_loss * lse) / n)[:, None])
                g[torch.arange(len(t), device=g.device), t] -= 1.0 / n
                if k is not None:
                    g.masked_fill_(~k[:, None], 0.0)
                g = g.to(cd)
                grad_h[s : s + chunk] = matmul_nt(g, w_t) if w_t is not None else g @ w
                if need_w:  # a frozen head (LoRA) needs no weight gradient
                    if w_t is not None:
                        grad_w += matmul_nt(g.t(), h.t())
                    elif cd == torch.float32:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w += (g.t() @ h).float()
        ce = (ce_sum / n).float()
        total = ((ce_sum + z_loss * z_sum) / n).float()
        ctx.mark_non_differentiable(ce)
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None)
        return total, ce

    @staticmethod
    def backward(ctx, grad_total, _grad_ce):  # noqa: D102
        grad_h, grad_w = ctx.saved_tensors
        grad_w = grad_w * grad_total.to(grad_w.dtype) if grad_w is not None else None
        return grad_h * grad_total.to(grad_h.dtype), grad_w, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    z_loss: float = 0.0,
    chunk: int = 1024,
    compute_dtype: torch.dtype | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, cross_entropy) of logits = hidden @ weight.T without keeping the logits: lm_loss fused with the LM head.

    hidden (..., d), weight (vocab, d), targets (...); matmuls in compute_dtype (bf16 under mixed
    precision), softmax and sums in fp32. Equal to lm_loss(hidden @ weight.T, targets, z_loss,
    ignore_index): targets equal to ignore_index are left out and the means run over the rest.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), float(z_loss), int(chunk), compute_dtype, ignore_index)


class HiddenStatesModel(torch.nn.Module):
    """Wraps a FalconForCausalLM so that forward returns final hidden states (B, T, d), for linear_cross_entropy.

    Uses the model's public `hidden_states`; DDP can wrap this module. Parameters are the model's own
    objects, so optimizers and state dicts taken from the inner model are unchanged.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.lm.hidden_states(input_ids)
