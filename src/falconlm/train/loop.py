"""The training loop: set up, then per optimizer step train, log, evaluate and checkpoint, as the config says.

Pretraining and fine-tuning run the same loop: a TrainTask (train/task.py) gives the batches,
(input_ids, labels) pairs for both, and how the model is loaded and saved. The steps it calls are
in train/trainer.py (setup), train/step.py (train_step, evaluate, save) and train/progress.py (log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from falconlm.train.config import TrainConfig
from falconlm.train.distributed import DistEnv
from falconlm.train.task import TrainTask


@dataclass
class RunResult:
    """What a run did: per-step losses (this process's view after the all-reduce), the final checkpoint, val losses."""

    losses: dict[int, float] = field(default_factory=dict)
    grad_norms: dict[int, float] = field(default_factory=dict)
    val_losses: dict[int, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    step: int = 0
    tokens: int = 0


def pretrain(cfg: TrainConfig, make_task: Callable[[TrainConfig, DistEnv], TrainTask] | None = None) -> RunResult:
    """Run (or resume) a training run as configured; every rank of a torchrun job calls this.

    make_task(cfg, env) gives the batches and model hooks (fine-tuning); None = pretraining on cfg.data.
    """
    from falconlm.train.distributed import close_distributed, init_distributed

    cfg.validate(require_data=make_task is None)
    env = init_distributed(cfg.device)
    try:
        return train(cfg, env, make_task)
    finally:
        close_distributed(env)


def _due(interval: int, step: int, last: bool) -> bool:
    """Whether an every-`interval`-steps action (0 = never) runs after `step`; the last step always runs it."""
    return last or (interval > 0 and step % interval == 0)


def train(cfg: TrainConfig, env: DistEnv, make_task: Callable[[TrainConfig, DistEnv], TrainTask] | None = None) -> RunResult:
    """The loop of one process: until the schedule's last step, train a step, then evaluate, log and save when due."""
    from falconlm.train.optim import set_lr
    from falconlm.train.progress import Progress
    from falconlm.train.step import evaluate, save, train_step
    from falconlm.train.trainer import build_trainer

    import contextlib

    from falconlm.atomic import output_dir

    # A run refused during setup (vocabulary, memory, settings) leaves no half-made --out behind.
    with output_dir(cfg.out) if env.is_main else contextlib.nullcontext():
        t = build_trainer(cfg, env, make_task)
    result = RunResult(step=t.step, tokens=t.tokens, checkpoint=t.last_checkpoint)
    if t.step >= t.sched.total_steps:
        if env.is_main:
            print(f"{t.task.name}: {t.last_checkpoint} is at step {t.step}, the run's last ({t.sched.total_steps}); nothing to do "
                  "(raise --max-steps or --max-tokens to train further)")
        return result
    progress = Progress(t)
    stop = _StopOnInterrupt(env)
    try:
        while t.step < t.sched.total_steps:
            plan = t.sched.plan(t.step + 1, t.tokens, t.samples)
            lr = t.sched.lr(plan.tokens_after(cfg.seq_len))
            set_lr(t.optimizer, lr)
            micro = t.task.batches.rank_micro_batches(plan.step, plan.samples_before, plan.batch)
            loss, norm = train_step(t, plan.step, micro)
            t.advance(plan)
            result.losses[t.step], result.grad_norms[t.step] = loss, norm
            progress.step_done(plan, loss, norm)

            last = t.step == t.sched.total_steps
            val_loss = None
            if _due(cfg.eval_interval, t.step, last):
                with progress.paused():
                    val_loss = evaluate(t)
                if val_loss is not None:
                    result.val_losses[t.step] = val_loss
            if _due(cfg.log_interval, t.step, last) or val_loss is not None:
                progress.log(plan, lr, val_loss)
            interrupted = stop.requested()
            if _due(cfg.save_interval, t.step, last) or interrupted:
                with progress.paused():
                    result.checkpoint = save(t)
            if interrupted:
                if env.is_main:
                    progress.bar.write(f"interrupted: saved {result.checkpoint} at step {t.step}; continue with --resume")
                raise KeyboardInterrupt
    finally:
        stop.restore()
        progress.close()
    result.step, result.tokens = t.step, t.tokens
    progress.summary(result)
    return result


class _StopOnInterrupt:
    """The first Ctrl-C (SIGINT) asks the loop to save a checkpoint after the current step and stop; a second one aborts at once.

    Under torchrun every rank gets the signal; the ranks agree (an all-reduce of the flag) so they save the same step together.
    """

    def __init__(self, env: DistEnv) -> None:
        import signal
        import threading

        self.env = env
        self.flag = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        import signal
        import sys

        if self.flag:  # the second Ctrl-C: stop now, without saving
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag = True
        print("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to abort without saving)", file=sys.stderr)

    def requested(self) -> bool:
        """Whether any rank was interrupted."""
        if not self.env.distributed:
            return self.flag
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.flag else 0.0], device=self.env.device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def restore(self) -> None:
        """Put the previous handler back."""
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
