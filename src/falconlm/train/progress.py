"""What a run shows and records as it goes: the header line, the progress bar, a metrics record per log window, the summary.

Throughput (tokens/s, MFU) counts training time only: evaluation and checkpointing run inside
`paused()`, which moves the window's start forward by the time they took.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from falconlm.train.metrics import MetricsLog, flops_per_token, format_duration, measure_peak_flops, plot_loss_curve
from falconlm.train.schedule import StepPlan
from falconlm.train.trainer import Trainer

if TYPE_CHECKING:
    from falconlm.train.loop import RunResult


class Progress:
    """The console and metrics.jsonl side of one run (rank 0 writes and prints; every rank keeps the window)."""

    def __init__(self, t: Trainer) -> None:
        self.t, cfg = t, t.cfg
        self.flops_per_token = flops_per_token(t.mconfig, cfg.seq_len)
        self.peak = cfg.peak_flops or measure_peak_flops(t.env.device, torch.bfloat16 if t.precision != "fp32" else torch.float32)
        self.metrics = MetricsLog(t.out, t.env.is_main, cfg.tensorboard, resume_step=t.step)
        self.run_t0, self.run_tokens0 = time.perf_counter(), t.tokens
        self._new_window()
        self.header()
        from tqdm import tqdm

        self.bar = tqdm(total=t.sched.total_steps, initial=t.step, desc=t.task.name, unit="step",
                        disable=not (t.env.is_main and cfg.progress_bar), dynamic_ncols=True)

    def _new_window(self) -> None:
        self.t0, self.window_tokens, self.losses, self.norms = time.perf_counter(), 0, [], []

    def header(self) -> None:
        """The run's one-line description: model, parallelism, precision, length, batch, data, peak."""
        t, cfg = self.t, self.t.cfg
        if not t.env.is_main:
            return
        n_params = t.mconfig.num_parameters()
        ramp = f"{t.sched.start}->" if cfg.batch_rampup_tokens > 0 and t.sched.start < cfg.global_batch_size else ""
        n_train = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
        trained = f" ({n_train / 1e6:.3f} M trained)" if n_train != n_params else ""
        print(
            f"{t.task.name}: {n_params / 1e6:.2f} M parameters{trained} ({t.mconfig.block_style}), {t.strategy} x {t.env.world} on {t.env.device.type}, "
            f"{t.precision}; {t.sched.total_steps:,} steps / {t.sched.total_tokens:,} tokens; seq_len {cfg.seq_len}, "
            f"global batch {ramp}{cfg.global_batch_size} seqs, micro {cfg.micro_batch_size}; "
            f"{t.task.description}; peak {self.peak / 1e9:.1f} GFLOP/s per device"
        )

    def step_done(self, plan: StepPlan, loss: float, norm: float) -> None:
        """Add a finished step to the log window and the progress bar."""
        self.window_tokens += plan.batch * self.t.cfg.seq_len
        self.losses.append(loss)
        self.norms.append(norm)
        self.bar.update(1)
        self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - start

    def log(self, plan: StepPlan, lr: float, val_loss: float | None) -> None:
        """Write the window's metrics record and console line, then start a new window."""
        t = self.t
        if t.env.device.type == "cuda":
            torch.cuda.synchronize()
        tps = self.window_tokens / max(time.perf_counter() - self.t0, 1e-9)
        mfu = self.flops_per_token * tps / (self.peak * t.env.world)
        done_rate = (t.tokens - self.run_tokens0) / max(time.perf_counter() - self.run_t0, 1e-9)
        eta = (t.sched.total_tokens - t.tokens) / done_rate if done_rate > 0 else math.inf
        record: dict[str, Any] = {
            "step": t.step, "tokens": t.tokens, "loss": float(np.mean(self.losses)), "lr": lr, "grad_norm": float(np.mean(self.norms)),
            "batch_size": plan.batch, "tokens_per_s": tps, "mfu": mfu if mfu <= 1.0 else None, "elapsed_s": time.perf_counter() - self.run_t0,
        }
        if val_loss is not None:
            record["val_loss"] = val_loss
        self.metrics.write(record)
        if t.env.is_main:
            vl = f" | val {val_loss:.4f}" if val_loss is not None else ""
            self.bar.write(
                f"step {t.step:>6}/{t.sched.total_steps} | loss {record['loss']:.4f}{vl} | lr {lr:.3e} | grad {record['grad_norm']:.3f} | "
                f"batch {plan.batch} | {tps:,.0f} tok/s | MFU {format_mfu(mfu)} | ETA {format_duration(eta)}"
            )
            sys.stdout.flush()  # log files and pipes see each line as it happens
        self._new_window()

    def close(self) -> None:
        """Close the bar and the metrics writers."""
        self.bar.close()
        self.metrics.close()

    def summary(self, result: RunResult) -> None:
        """The loss-curve PNG and the closing line."""
        if not self.t.env.is_main:
            return
        plot = plot_loss_curve(self.t.out / "metrics.jsonl", self.t.out / "loss_curve.png")
        final_val = result.val_losses.get(result.step)
        vl = f", held-out loss {final_val:.4f}" if final_val is not None else ""
        print(
            f"done: {result.step} steps, {result.tokens:,} tokens in {format_duration(time.perf_counter() - self.run_t0)}; "
            f"final loss {result.losses.get(result.step, float('nan')):.4f}{vl}; checkpoint {result.checkpoint}"
            + (f"; loss curve {plot}" if plot else "")
        )


def format_mfu(mfu: float) -> str:
    """MFU as a percentage; above 100% the peak it is measured against is too low (a tiny model outruns the matmul probe), so no figure."""
    return f"{mfu * 100:.1f}%" if mfu <= 1.0 else "n/a (above the measured peak; pass --peak-flops)"
