"""The training loop: one optimizer step = accumulate micro-batches, clip, AdamW; log, evaluate, checkpoint.

Pretraining runs it on token-shard windows; fine-tuning (falconlm.finetune) passes a TrainTask whose
batches carry labels with ignored positions (train/task.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from falconlm.errors import FalconError
from falconlm.train.config import TrainConfig

if TYPE_CHECKING:
    from falconlm.train.distributed import DistEnv
    from falconlm.train.task import TrainTask

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did: per-step losses (this process's view after the all-reduce), the final checkpoint, val losses."""

    losses: dict[int, float] = field(default_factory=dict)
    grad_norms: dict[int, float] = field(default_factory=dict)
    val_losses: dict[int, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    step: int = 0
    tokens: int = 0


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return cfg.precision


def _model_config(cfg: TrainConfig, resume_from: Path | None):
    """The FalconConfig: from the checkpoint being resumed, else the preset / config.json / checkpoint + overrides."""
    import dataclasses

    from falconlm.model.config import FalconConfig

    if resume_from is not None:
        return FalconConfig.from_json(resume_from / "config.json"), resume_from
    src = Path(cfg.model)
    weights = src if src.is_dir() and (src / "config.json").is_file() else None
    from falconlm.model.config import PRESETS

    valid = {f.name for f in dataclasses.fields(FalconConfig)}
    bad = sorted(set(cfg.model_overrides) - valid)
    if bad:
        raise FalconError(f"unknown model_overrides field(s): {', '.join(bad)}")
    if cfg.model_overrides and weights is not None:
        raise FalconError("model_overrides cannot change the shape of a model loaded from a checkpoint")
    if cfg.model in PRESETS:
        # From the preset's raw fields, so derived sizes (ffn, kv heads) follow the overrides.
        base = FalconConfig.from_preset(cfg.model, **cfg.model_overrides)
    else:
        base = dataclasses.replace(FalconConfig.load(cfg.model), **cfg.model_overrides)
    return base, weights


def pretrain(cfg: TrainConfig, make_task: Callable[[TrainConfig, "DistEnv"], "TrainTask"] | None = None) -> RunResult:
    """Run (or resume) a training run as configured; every rank of a torchrun job calls this.

    make_task(cfg, env) gives the batches and model hooks (fine-tuning); None = pretraining on cfg.data.
    """
    from falconlm.train.distributed import close_distributed, init_distributed

    cfg.validate(require_data=make_task is None)
    env = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, env, make_task)
    finally:
        close_distributed(env)


def _pretrain(cfg: TrainConfig, env, make_task=None) -> RunResult:
    from tqdm import tqdm

    from falconlm.model.falcon import FalconForCausalLM, build_model
    from falconlm.train import checkpoint as ckpt
    from falconlm.train.distributed import all_reduce_mean, all_reduce_sum, enable_activation_checkpointing, grad_sync, resolve_strategy, wrap_model
    from falconlm.train.loss import IGNORE_INDEX, HiddenStatesModel, linear_cross_entropy, lm_loss
    from falconlm.train.metrics import MetricsLog, flops_per_token, format_duration, measure_peak_flops, plot_loss_curve
    from falconlm.train.optim import build_optimizer, set_lr
    from falconlm.train.schedule import Schedule
    from falconlm.train.task import pretraining_task

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt.clean_stale(ckpt_dir, env)
    resume_from = ckpt.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if not cfg.resume and ckpt.latest_checkpoint(ckpt_dir) is not None:
        raise FalconError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue that run or choose another --out")
    if cfg.resume and resume_from is None and env.is_main:
        print(f"--resume: no checkpoint in {ckpt_dir} yet, starting from scratch")

    strategy = resolve_strategy(cfg.strategy, env)
    precision = _precision(cfg, env.device)
    task = (make_task or pretraining_task)(cfg, env)
    mconfig, weights_dir = _model_config(cfg, resume_from if task.load_model is None else None)
    if task.vocab_size > mconfig.vocab_size:
        raise FalconError(f"{task.data_name} has {task.vocab_size:,} ids but the model's vocab_size is {mconfig.vocab_size:,}")
    if mconfig.alibi is False and cfg.seq_len > mconfig.max_position_embeddings and env.is_main:
        log.warning("seq_len %d exceeds max_position_embeddings %d", cfg.seq_len, mconfig.max_position_embeddings)

    # Model: identical initial weights on every rank (same seed), or the checkpoint's.
    param_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    if task.load_model is not None:
        model = task.load_model(resume_from, param_dtype, env.device)
    elif weights_dir is not None:
        model = FalconForCausalLM.from_pretrained(weights_dir, dtype=param_dtype, device=env.device)
    else:
        model = build_model(mconfig, dtype=param_dtype, device=env.device, seed=cfg.seed)
    model.train()
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    # Fused head + loss: the trained module returns hidden states and the loss applies the LM head in
    # chunks. FSDP2 owns the head weight's unsharded copy only inside forward, so it keeps the model's head.
    head_weight, trainable = None, model
    if cfg.fused_loss and strategy != "fsdp":
        head_weight, trainable = model.lm_head.weight, HiddenStatesModel(model)
    wrapped = wrap_model(trainable, strategy, env, precision)
    # Compiled for training only: evaluation runs under no_grad, where the model switches to oneDNN
    # linears that inductor cannot lower (torch 2.13), so it uses the eager module.
    train_forward = torch.compile(wrapped) if cfg.compile else wrapped
    optimizer = build_optimizer(model, cfg)  # the same parameter objects, named as in the HF model

    sched = Schedule(cfg, env.world)
    step, tokens, samples = 0, 0, 0
    if resume_from is not None:
        trainer, rng = ckpt.load_trainer_state(resume_from, env)
        ckpt.load_optimizer_state(model, optimizer, trainer["optimizer"])
        step, tokens, samples = trainer["step"], trainer["tokens"], trainer["samples"]
        if rng is not None:
            ckpt.set_rng_state(rng)
        if env.is_main:
            print(f"resumed from {resume_from} at step {step} ({tokens:,} tokens)")
    else:
        torch.manual_seed(cfg.seed + env.rank)
        np.random.seed((cfg.seed + env.rank) % 2**32)

    source, val, tokenizer_dir = task.batches, task.heldout, task.tokenizer_dir
    if env.is_main:
        cfg.save(out / "run_config.yaml")

    use_autocast = precision == "bf16-mixed" and strategy != "fsdp"
    autocast = (lambda: torch.autocast(env.device.type, dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext
    head_dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def loss_of(batch, z_loss: float, training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, cross-entropy) of one micro-batch: windows, or (input_ids, labels) with ignored positions."""
        inputs, targets, ignore = batch if task.labelled else (batch[:, :-1], batch[:, 1:], None)
        with autocast():
            out = (train_forward if training else wrapped)(inputs)
        if head_weight is not None:
            return linear_cross_entropy(out, head_weight, targets, z_loss, compute_dtype=head_dtype, ignore_index=ignore)
        return lm_loss(out, targets, z_loss, ignore_index=ignore)
    fpt = flops_per_token(mconfig, cfg.seq_len)
    peak = cfg.peak_flops or measure_peak_flops(env.device, torch.bfloat16 if precision != "fp32" else torch.float32)
    metrics = MetricsLog(out, env.is_main, cfg.tensorboard, resume_step=step)
    result = RunResult(step=step, tokens=tokens)

    def to_device(a):
        if task.labelled:  # (input_ids, labels) -> (input_ids, labels, ignore_index) tensors
            return (*(torch.from_numpy(x).to(env.device, non_blocking=True) for x in a), IGNORE_INDEX)
        return torch.from_numpy(a).to(env.device, non_blocking=True)

    def evaluate() -> float | None:
        if val is None:
            return None
        wrapped.eval()
        total = torch.zeros((), dtype=torch.float64, device=env.device)
        if task.labelled:  # mean over the held-out tokens that carry a label
            counted = 0
            with torch.no_grad():
                for i in range(0, len(val[0]), cfg.micro_batch_size):
                    rows = (val[0][i : i + cfg.micro_batch_size], val[1][i : i + cfg.micro_batch_size])
                    n = int((rows[1] != IGNORE_INDEX).sum())
                    total += loss_of(to_device(rows), 0.0, training=False)[1].double() * n
                    counted += n
            wrapped.train()
            return float(total / max(counted, 1))
        with torch.no_grad():
            for i in range(0, len(val), cfg.micro_batch_size):
                batch = to_device(val[i : i + cfg.micro_batch_size])
                total += loss_of(batch, 0.0, training=False)[1].double() * len(batch)
        wrapped.train()
        return float(total / len(val))

    if env.is_main:
        n_params = mconfig.num_parameters()
        ramp = f"{sched.start}->" if cfg.batch_rampup_tokens > 0 and sched.start < cfg.global_batch_size else ""
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trained = f" ({n_train / 1e6:.3f} M trained)" if n_train != n_params else ""
        print(
            f"{task.name}: {n_params / 1e6:.2f} M parameters{trained} ({mconfig.block_style}), {strategy} x {env.world} on {env.device.type}, "
            f"{precision}; {sched.total_steps:,} steps / {sched.total_tokens:,} tokens; seq_len {cfg.seq_len}, "
            f"global batch {ramp}{cfg.global_batch_size} seqs, micro {cfg.micro_batch_size}; "
            f"{task.description}; peak {peak / 1e9:.1f} GFLOP/s per device"
        )
    bar = tqdm(total=sched.total_steps, initial=step, desc=task.name, unit="step", disable=not (env.is_main and cfg.progress_bar), dynamic_ncols=True)
    window = {"t0": time.perf_counter(), "tokens": 0, "losses": [], "norms": []}
    run_t0, run_tokens0 = time.perf_counter(), tokens
    last_ckpt = resume_from
    try:
        while step < sched.total_steps:
            plan = sched.plan(step + 1, tokens, samples)
            lr = sched.lr(plan.tokens_after(cfg.seq_len))
            set_lr(optimizer, lr)
            micro = source.rank_micro_batches(plan.step, plan.samples_before, plan.batch)
            loss_sum = torch.zeros((), dtype=torch.float32, device=env.device)
            # Labelled batches: each micro-batch's mean is weighted by its share of the step's labelled
            # tokens over all ranks, so the step optimises the mean over every labelled token of the
            # global batch (what one big batch would), whatever the micro-batch and world sizes.
            weights = None
            if task.labelled:
                counts = [int((labels != IGNORE_INDEX).sum()) for _, labels in micro]
                total_count = max(all_reduce_sum(sum(counts), env), 1)
                weights = [c * env.world / total_count for c in counts]
            for m, arr in enumerate(micro):
                batch = to_device(arr)
                with grad_sync(wrapped, strategy, enabled=(m == len(micro) - 1)):
                    loss, _ce = loss_of(batch, cfg.z_loss)
                    (loss / len(micro) if weights is None else loss * weights[m]).backward()
                loss_sum += loss.detach() if weights is None else loss.detach() * weights[m]
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            step_loss = float(all_reduce_mean(loss_sum / len(micro) if weights is None else loss_sum, env))
            if not math.isfinite(step_loss):
                where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise FalconError(f"the run diverged: loss is {step_loss} at step {plan.step}; {where} (lower --lr or raise warm-up, then --resume)")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, tokens, samples = plan.step, plan.tokens_after(cfg.seq_len), samples + plan.batch
            norm_f = float(norm)
            result.losses[step], result.grad_norms[step] = step_loss, norm_f
            window["tokens"] += plan.batch * cfg.seq_len
            window["losses"].append(step_loss)
            window["norms"].append(norm_f)
            bar.update(1)
            bar.set_postfix_str(f"loss {step_loss:.4f}", refresh=False)

            last = step == sched.total_steps
            val_loss = None
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or last:
                t_eval = time.perf_counter()
                val_loss = evaluate()
                window["t0"] += time.perf_counter() - t_eval  # throughput counts training time only
                if val_loss is not None:
                    result.val_losses[step] = val_loss
            if step % cfg.log_interval == 0 or last or val_loss is not None:
                if env.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = max(time.perf_counter() - window["t0"], 1e-9)
                tps = window["tokens"] / dt
                mfu = fpt * tps / (peak * env.world)
                done_rate = (tokens - run_tokens0) / max(time.perf_counter() - run_t0, 1e-9)
                eta = (sched.total_tokens - tokens) / done_rate if done_rate > 0 else math.inf
                record = {
                    "step": step,
                    "tokens": tokens,
                    "loss": float(np.mean(window["losses"])),
                    "lr": lr,
                    "grad_norm": float(np.mean(window["norms"])),
                    "batch_size": plan.batch,
                    "tokens_per_s": tps,
                    "mfu": mfu,
                    "elapsed_s": time.perf_counter() - run_t0,
                }
                if val_loss is not None:
                    record["val_loss"] = val_loss
                metrics.write(record)
                if env.is_main:
                    vl = f" | val {val_loss:.4f}" if val_loss is not None else ""
                    bar.write(
                        f"step {step:>6}/{sched.total_steps} | loss {record['loss']:.4f}{vl} | lr {lr:.3e} | grad {record['grad_norm']:.3f} | "
                        f"batch {plan.batch} | {tps:,.0f} tok/s | MFU {mfu * 100:.1f}% | ETA {format_duration(eta)}"
                    )
                    sys.stdout.flush()  # log files and pipes see each line as it happens
                window = {"t0": time.perf_counter(), "tokens": 0, "losses": [], "norms": []}
            if (cfg.save_interval and step % cfg.save_interval == 0) or last:
                trainer = {"step": step, "tokens": tokens, "samples": samples, "config": cfg.to_dict()}
                t_save = time.perf_counter()
                last_ckpt = ckpt.save_checkpoint(ckpt_dir, step, model, optimizer, mconfig, trainer, env, cfg.keep_last, tokenizer_dir, task.write_model)
                result.checkpoint = last_ckpt
                window["t0"] += time.perf_counter() - t_save
    finally:
        bar.close()
        metrics.close()
    result.step, result.tokens = step, tokens
    if env.is_main:
        plot = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        final_val = result.val_losses.get(step)
        vl = f", held-out loss {final_val:.4f}" if final_val is not None else ""
        print(
            f"done: {step} steps, {tokens:,} tokens in {format_duration(time.perf_counter() - run_t0)}; "
            f"final loss {result.losses.get(step, float('nan')):.4f}{vl}; checkpoint {result.checkpoint}"
            + (f"; loss curve {plot}" if plot else "")
        )
    return result
