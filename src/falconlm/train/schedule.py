"""The Falcon schedules as pure functions of tokens seen: LR warm-up + cosine, and batch-size ramp-up.

Both depend only on the count of training tokens consumed, so a resumed run (which restores that
count) follows the same curve, and the same formula serves any world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from falconlm.errors import FalconError


def lr_at(tokens: float, max_lr: float, min_lr: float, warmup_tokens: float, decay_tokens: float) -> float:
    """LR after `tokens` training tokens: linear 0 -> max over warm-up, then cosine to min_lr at decay_tokens."""
    if warmup_tokens > 0 and tokens < warmup_tokens:
        return max_lr * tokens / warmup_tokens
    if tokens >= decay_tokens:
        return min_lr
    progress = (tokens - warmup_tokens) / max(decay_tokens - warmup_tokens, 1e-12)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def batch_size_at(tokens: float, start: int, target: int, rampup_tokens: float, unit: int) -> int:
    """Global batch (sequences) after `tokens` tokens: linear start -> target over rampup_tokens, in multiples of unit."""
    if rampup_tokens <= 0 or tokens >= rampup_tokens:
        return target
    raw = start + (target - start) * tokens / rampup_tokens
    return max(start, min(target, int(raw // unit) * unit))


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step does: its global batch and the tokens seen before and after it."""

    step: int  # 1-based
    batch: int  # sequences in the global batch
    accum: int  # micro-batches per rank
    tokens_before: int
    samples_before: int  # index of the step's first sample in the run's sample stream

    def tokens_after(self, seq_len: int) -> int:
        """Tokens consumed once this step is done."""
        return self.tokens_before + self.batch * seq_len


class Schedule:
    """Batch ramp-up and LR schedule of a run, resolved for a world size."""

    def __init__(self, cfg, world_size: int) -> None:
        self.cfg = cfg
        self.seq_len = cfg.seq_len
        self.unit = cfg.micro_batch_size * world_size
        if cfg.global_batch_size % self.unit:
            raise FalconError(
                f"global_batch_size {cfg.global_batch_size} must be a multiple of micro_batch_size x world size "
                f"= {cfg.micro_batch_size} x {world_size}"
            )
        self.start = cfg.batch_rampup_start or self.unit
        if self.start % self.unit or self.start > cfg.global_batch_size:
            raise FalconError(f"batch_rampup_start {self.start} must be a multiple of {self.unit} and at most global_batch_size")
        self.total_steps, self.total_tokens = self._length()
        self.decay_tokens = cfg.decay_tokens if cfg.decay_tokens is not None else self.total_tokens

    def batch_at(self, tokens: int) -> int:
        """Global batch for a step that starts after `tokens` tokens."""
        c = self.cfg
        return batch_size_at(tokens, self.start, c.global_batch_size, c.batch_rampup_tokens, self.unit)

    def _length(self) -> tuple[int, int]:
        """Number of steps and tokens of the whole run."""
        c = self.cfg
        max_steps = c.max_steps if c.max_steps is not None else 1 << 62
        max_tokens = c.max_tokens if c.max_tokens is not None else float("inf")
        steps, tokens = 0, 0
        while steps < max_steps and tokens < max_tokens:
            if tokens >= c.batch_rampup_tokens and c.max_steps is not None and max_tokens == float("inf"):
                # Past the ramp every step is full size: finish in closed form.
                left = max_steps - steps
                return max_steps, tokens + left * c.global_batch_size * self.seq_len
            if tokens >= c.batch_rampup_tokens and max_tokens != float("inf"):
                per = c.global_batch_size * self.seq_len
                left = min(max_steps - steps, math.ceil((max_tokens - tokens) / per))
                return steps + left, tokens + left * per
            tokens += self.batch_at(tokens) * self.seq_len
            steps += 1
        return steps, tokens

    def plan(self, step: int, tokens_before: int, samples_before: int) -> StepPlan:
        """The plan of 1-based `step` given the tokens and samples consumed before it."""
        batch = self.batch_at(tokens_before)
        return StepPlan(step, batch, batch // self.unit, tokens_before, samples_before)

    def lr(self, tokens: float) -> float:
        """LR for a step whose batch ends at `tokens` (so the first step already has a non-zero LR)."""
        c = self.cfg
        return lr_at(tokens, c.lr, c.min_lr, c.warmup_tokens, self.decay_tokens)
