"""The named steps of the loop: the loss of a micro-batch, one optimizer step, a held-out evaluation, a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from falconlm.errors import FalconError
from falconlm.train.distributed import all_reduce_mean, all_reduce_sum, grad_sync
from falconlm.train.task import Batch
from falconlm.train.trainer import Trainer


def micro_loss(t: Trainer, batch: Batch, z_loss: float, training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, cross-entropy) of one micro-batch: the means over its labelled tokens."""
    # Looked up at call time, so a test can patch the module's functions.
    from falconlm.train import loss

    inputs, labels = (torch.from_numpy(a).to(t.env.device, non_blocking=True) for a in batch)
    # Without ignored labels the loss takes its plain path, with no mask and no device sync (same values).
    ignore = loss.IGNORE_INDEX if (batch[1] == loss.IGNORE_INDEX).any() else None
    with t.autocast():
        out = (t.train_forward if training else t.wrapped)(inputs)
    if t.head_weight is not None:
        return loss.linear_cross_entropy(out, t.head_weight, labels, z_loss, compute_dtype=t.head_dtype, ignore_index=ignore)
    return loss.lm_loss(out, labels, z_loss, ignore_index=ignore)


def _shares(t: Trainer, micro: list[Batch]) -> list[float]:
    """Each micro-batch's share of the step's labelled tokens over all ranks, relative to an equal share.

    Weighting the micro-batch means by these makes the step optimise the mean over every labelled
    token of the global batch (what one big batch would), whatever the micro-batch and world sizes.
    When every micro-batch holds as many labels (always in pretraining) each share is exactly 1.0,
    so the step is the plain mean of its micro-batches, to the last bit.
    """
    from falconlm.train.loss import IGNORE_INDEX

    counts = [int((labels != IGNORE_INDEX).sum()) for _, labels in micro]
    total = max(all_reduce_sum(sum(counts), t.env), 1)
    return [c * t.env.world * len(micro) / total for c in counts]


def train_step(t: Trainer, step: int, micro: list[Batch]) -> tuple[float, float]:
    """One optimizer step on this rank's micro-batches: accumulate, clip, AdamW; (loss over all ranks, pre-clip grad norm)."""
    shares = _shares(t, micro)
    loss_sum = torch.zeros((), dtype=torch.float32, device=t.env.device)
    for m, batch in enumerate(micro):
        with grad_sync(t.wrapped, t.strategy, enabled=(m == len(micro) - 1)):
            loss, _ce = micro_loss(t, batch, t.cfg.z_loss)
            (loss * shares[m] / len(micro)).backward()
        loss_sum += loss.detach() * shares[m]
    norm = torch.nn.utils.clip_grad_norm_(t.wrapped.parameters(), t.cfg.grad_clip if t.cfg.grad_clip > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    step_loss = float(all_reduce_mean(loss_sum / len(micro), t.env))
    if not math.isfinite(step_loss):
        where = f"the last good checkpoint is {t.last_checkpoint}" if t.last_checkpoint else "no checkpoint was written yet"
        raise FalconError(f"the run diverged: loss is {step_loss} at step {step}; {where} (lower --lr or raise warm-up, then --resume)")
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    return step_loss, float(norm)


def evaluate(t: Trainer) -> float | None:
    """Mean cross-entropy over the held-out tokens that carry a label; None without held-out data."""
    from falconlm.train.loss import IGNORE_INDEX

    if t.task.heldout is None:
        return None
    inputs, labels = t.task.heldout
    size = t.cfg.micro_batch_size
    total = torch.zeros((), dtype=torch.float64, device=t.env.device)
    counted = 0
    t.wrapped.eval()
    with torch.no_grad():
        for i in range(0, len(inputs), size):
            batch = (inputs[i : i + size], labels[i : i + size])
            n = int((batch[1] != IGNORE_INDEX).sum())
            total += micro_loss(t, batch, 0.0, training=False)[1].double() * n
            counted += n
    t.wrapped.train()
    return float(total / max(counted, 1))


def save(t: Trainer) -> Path:
    """Write the checkpoint of the current step (every rank takes part) and remember it as the last good one."""
    from falconlm.train import checkpoint as ckpt

    t.last_checkpoint = ckpt.save_checkpoint(
        t.ckpt_dir, t.step, t.model, t.optimizer, t.mconfig, t.trainer_state(), t.env, t.cfg.keep_last, t.task.tokenizer_dir, t.task.write_model
    )
    return t.last_checkpoint
