"""The pretraining loop: one optimizer step = accumulate micro-batches, clip, AdamW; log, evaluate, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from falconlm.errors import FalconError
from falconlm.train.config import TrainConfig

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


def pretrain(cfg: TrainConfig) -> RunResult:
    """Run (or resume) a pretraining run as configured; every rank of a torchrun job calls this."""
    from falconlm.train.distributed import close_distributed, init_distributed

    cfg.validate()
    env = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, env)
    finally:
        close_distributed(env)


def _pretrain(cfg: TrainConfig, env) -> RunResult:
    from tqdm import tqdm

    from falconlm.model.falcon import FalconForCausalLM, build_model
    from falconlm.train import checkpoint as ckpt
    from falconlm.train.data import BatchSource, TokenWindows, heldout_windows
    from falconlm.train.distributed import all_reduce_mean, enable_activation_checkpointing, grad_sync, resolve_strategy, wrap_model
    from falconlm.train.loss import HiddenStatesModel, linear_cross_entropy, lm_loss
    from falconlm.train.metrics import MetricsLog, flops_per_token, format_duration, measure_peak_flops, plot_loss_curve
    from falconlm.train.optim import build_optimizer, set_lr
    from falconlm.train.schedule import Schedule
    from falconlm.train.shards import ShardIndex

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
    index = ShardIndex.load(cfg.data)
    mconfig, weights_dir = _model_config(cfg, resume_from)
    if index.vocab_size > mconfig.vocab_size:
        raise FalconError(f"the tokenizer of {cfg.data} has {index.vocab_size:,} ids but the model's vocab_size is {mconfig.vocab_size:,}")
    if mconfig.alibi is False and cfg.seq_len > mconfig.max_position_embeddings and env.is_main:
        log.warning("seq_len %d exceeds max_position_embeddings %d", cfg.seq_len, mconfig.max_position_embeddings)

    # Model: identical initial weights on every rank (same seed), or the checkpoint's.
    param_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    if weights_dir is not None:
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

    train_windows = TokenWindows(cfg.data, "train", cfg.seq_len)
    source = BatchSource(train_windows, cfg.sampling, cfg.seed, env.rank, env.world, cfg.micro_batch_size)
    val = heldout_windows(cfg.data, cfg.seq_len, cfg.eval_batches * cfg.micro_batch_size)
    tokenizer_dir = Path(cfg.data) / "tokenizer" if (Path(cfg.data) / "tokenizer" / "tokenizer.json").is_file() else None
    if env.is_main:
        cfg.save(out / "run_config.yaml")

    use_autocast = precision == "bf16-mixed" and strategy != "fsdp"
    autocast = (lambda: torch.autocast(env.device.type, dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext
    head_dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def loss_of(batch: torch.Tensor, z_loss: float, training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, cross-entropy) of one micro-batch of windows."""
        with autocast():
            out = (train_forward if training else wrapped)(batch[:, :-1])
        if head_weight is not None:
            return linear_cross_entropy(out, head_weight, batch[:, 1:], z_loss, compute_dtype=head_dtype)
        return lm_loss(out, batch[:, 1:], z_loss)
    fpt = flops_per_token(mconfig, cfg.seq_len)
    peak = cfg.peak_flops or measure_peak_flops(env.device, torch.bfloat16 if precision != "fp32" else torch.float32)
    metrics = MetricsLog(out, env.is_main, cfg.tensorboard, resume_step=step)
    result = RunResult(step=step, tokens=tokens)

    def to_device(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(env.device, non_blocking=True)

    def evaluate() -> float | None:
        if val is None:
            return None
        wrapped.eval()
        total = torch.zeros((), dtype=torch.float64, device=env.device)
        with torch.no_grad():
            for i in range(0, len(val), cfg.micro_batch_size):
                batch = to_device(val[i : i + cfg.micro_batch_size])
                total += loss_of(batch, 0.0, training=False)[1].double() * len(batch)
        wrapped.train()
        return float(total / len(val))

    if env.is_main:
        n_params = mconfig.num_parameters()
        ramp = f"{sched.start}->" if cfg.batch_rampup_tokens > 0 and sched.start < cfg.global_batch_size else ""
        print(
            f"pretrain: {n_params / 1e6:.2f} M parameters ({mconfig.block_style}), {strategy} x {env.world} on {env.device.type}, "
            f"{precision}; {sched.total_steps:,} steps / {sched.total_tokens:,} tokens; seq_len {cfg.seq_len}, "
            f"global batch {ramp}{cfg.global_batch_size} seqs, micro {cfg.micro_batch_size}; "
            f"{train_windows.tokens:,} train tokens; peak {peak / 1e9:.1f} GFLOP/s per device"
        )
    bar = tqdm(total=sched.total_steps, initial=step, desc="pretrain", unit="step", disable=not (env.is_main and cfg.progress_bar), dynamic_ncols=True)
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
            for m, arr in enumerate(micro):
                batch = to_device(arr)
                with grad_sync(wrapped, strategy, enabled=(m == len(micro) - 1)):
                    loss, _ce = loss_of(batch, cfg.z_loss)
                    (loss / len(micro)).backward()
                loss_sum += loss.detach()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            step_loss = float(all_reduce_mean(loss_sum / len(micro), env))
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
                last_ckpt = ckpt.save_checkpoint(ckpt_dir, step, model, optimizer, mconfig, trainer, env, cfg.keep_last, tokenizer_dir)
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
