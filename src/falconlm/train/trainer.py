"""A run set up for its loop: the task's batches, the model (plain, wrapped, compiled), optimizer, schedule, position.

build_trainer does everything before the first step (checkpoint to resume, model, parallel wrapping,
optimizer, RNG); the steps (train/step.py) and the loop (train/loop.py) read and advance a Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from falconlm.atomic import remove_stale_temps
from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.train.config import TrainConfig
from falconlm.train.distributed import DistEnv
from falconlm.train.schedule import Schedule, StepPlan
from falconlm.train.task import TrainTask

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything a run's steps share, and how far the run has got."""

    cfg: TrainConfig
    env: DistEnv
    task: TrainTask
    mconfig: FalconConfig
    model: nn.Module  # the FalconForCausalLM: parameters, optimizer groups, state dicts
    wrapped: nn.Module  # the module DDP / FSDP2 wrap (the model, or HiddenStatesModel around it); eager, for evaluation
    train_forward: Callable[[torch.Tensor], torch.Tensor]  # wrapped, compiled when asked: training
    head_weight: torch.Tensor | None  # the LM head when the loss applies it in chunks (fused), else None
    optimizer: torch.optim.Optimizer
    sched: Schedule
    strategy: str
    precision: str
    out: Path
    ckpt_dir: Path
    resume_from: Path | None
    step: int = 0
    tokens: int = 0
    samples: int = 0
    last_checkpoint: Path | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast under bf16-mixed (FSDP2 casts through its own policy instead), else nothing."""
        if self.precision == "bf16-mixed" and self.strategy != "fsdp":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def head_dtype(self) -> torch.dtype | None:
        """The fused head's matmul dtype: bf16 under bf16-mixed, else the weight's own."""
        return torch.bfloat16 if self.precision == "bf16-mixed" else None

    def advance(self, plan: StepPlan) -> None:
        """Record that `plan`'s step is done."""
        self.step, self.tokens, self.samples = plan.step, plan.tokens_after(self.cfg.seq_len), self.samples + plan.batch

    def trainer_state(self) -> dict[str, Any]:
        """What a checkpoint stores besides weights, optimizer and RNG."""
        return {"step": self.step, "tokens": self.tokens, "samples": self.samples, "config": self.cfg.to_dict()}


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return cfg.precision


def _model_config(cfg: TrainConfig, resume_from: Path | None) -> tuple[FalconConfig, Path | None]:
    """The FalconConfig: from the checkpoint being resumed, else the preset / config.json / checkpoint + overrides."""
    from falconlm.model.config import PRESETS

    if resume_from is not None:
        return FalconConfig.from_json(resume_from / "config.json"), resume_from
    src = Path(cfg.model)
    weights = src if src.is_dir() and (src / "config.json").is_file() else None
    valid = {f.name for f in dataclasses.fields(FalconConfig)}
    bad = sorted(set(cfg.model_overrides) - valid)
    if bad:
        raise FalconError(f"unknown model_overrides field(s): {', '.join(bad)}")
    if cfg.model_overrides and weights is not None:
        raise FalconError("model_overrides cannot change the shape of a model loaded from a checkpoint")
    if cfg.model in PRESETS:
        # From the preset's raw fields, so derived sizes (ffn, kv heads) follow the overrides.
        return FalconConfig.from_preset(cfg.model, **cfg.model_overrides), weights
    return dataclasses.replace(FalconConfig.load(cfg.model), **cfg.model_overrides), weights


def _resume_point(cfg: TrainConfig, env: DistEnv, ckpt_dir: Path) -> Path | None:
    """The checkpoint to continue from (--resume), after clearing half-written ones; refuses to overwrite a run."""
    from falconlm.train import checkpoint as ckpt

    ckpt.clean_stale(ckpt_dir, env)
    latest = ckpt.latest_checkpoint(ckpt_dir)
    if not cfg.resume and latest is not None:
        raise FalconError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue that run or choose another --out")
    if cfg.resume and latest is None and env.is_main:
        print(f"--resume: no checkpoint in {ckpt_dir} yet, starting from scratch")
    return latest if cfg.resume else None


def check_model(cfg: TrainConfig, env: DistEnv, task: TrainTask, mconfig: FalconConfig, precision: str, strategy: str) -> None:
    """Refuse, before anything is allocated, a model the data or the sequence length cannot use, or one too big for the machine."""
    from falconlm.memory import check_fits, training_bytes

    if task.vocab_size > mconfig.vocab_size:
        raise FalconError(f"{task.data_name} has {task.vocab_size:,} ids but the model's vocab_size is {mconfig.vocab_size:,}; "
                          f"give the model that vocabulary (--model-overrides vocab_size={task.vocab_size}) or tokenize with a smaller tokenizer")
    if not mconfig.alibi and cfg.seq_len > mconfig.max_position_embeddings:
        raise FalconError(f"--seq-len {cfg.seq_len:,} exceeds the model's max_position_embeddings {mconfig.max_position_embeddings:,} "
                          "(its rotary positions stop there); lower --seq-len or raise max_position_embeddings with --model-overrides")
    need = training_bytes(mconfig, cfg.seq_len, cfg.micro_batch_size, 2 if precision == "bf16-true" else 4, task.trainable_fraction,
                          env.world if strategy == "fsdp" else 1, cfg.activation_checkpointing)
    name = Path(cfg.model).name
    check_fits(need, f"{task.name} of {mconfig.num_parameters() / 1e9:.2f}B-parameter {name}", str(env.device), cfg.force,
               hint="choose a smaller --model (e.g. tiny-7b) or lower --micro-batch-size / --seq-len")


def _build_model(cfg: TrainConfig, env: DistEnv, task: TrainTask, resume_from: Path | None, precision: str, strategy: str) -> tuple[nn.Module, FalconConfig]:
    """The model to train, with identical initial weights on every rank (same seed) or the checkpoint's."""
    from falconlm.model.falcon import FalconForCausalLM, build_model

    mconfig, weights_dir = _model_config(cfg, resume_from if task.load_model is None else None)
    fresh = weights_dir is None and task.load_model is None
    if fresh and "vocab_size" not in cfg.model_overrides and task.vocab_size > mconfig.vocab_size:
        # A new model from a preset embeds the data's tokenizer: the preset's vocab_size is only a default.
        if env.is_main:
            print(f"{task.name}: vocab_size {mconfig.vocab_size:,} -> {task.vocab_size:,}, the ids of {task.data_name}")
        mconfig = dataclasses.replace(mconfig, vocab_size=task.vocab_size)
    check_model(cfg, env, task, mconfig, precision, strategy)
    param_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    if task.load_model is not None:
        model = task.load_model(resume_from, param_dtype, env.device)
    elif weights_dir is not None:
        model = FalconForCausalLM.from_pretrained(weights_dir, dtype=param_dtype, device=env.device)
    else:
        model = build_model(mconfig, dtype=param_dtype, device=env.device, seed=cfg.seed)
    model.train()
    return model, mconfig


def warn_short_run(t: Trainer) -> None:
    """Say loudly when the warm-up or the batch ramp-up outlasts the run: the paper's schedules do nothing on a short run."""
    c, total = t.cfg, t.sched.total_tokens
    if not t.env.is_main:
        return
    if c.warmup_tokens > total:
        print(f"warning: the warm-up ({c.warmup_tokens:,.0f} tokens) is longer than the whole run ({total:,} tokens), so the learning rate "
              f"never reaches --lr {c.lr:g} (it ends at {t.sched.lr(total):.2e}); set --warmup-tokens to a part of the run, e.g. {total // 10:,}",
              file=sys.stderr)
    if c.batch_rampup_tokens > total and t.sched.start < c.global_batch_size:
        print(f"warning: the batch ramp-up ({c.batch_rampup_tokens:,.0f} tokens) is longer than the whole run ({total:,} tokens), so the "
              f"global batch never reaches --global-batch-size {c.global_batch_size}; set --batch-rampup-tokens 0 (off) or to a part of the run",
              file=sys.stderr)


def build_trainer(cfg: TrainConfig, env: DistEnv, make_task: Callable[[TrainConfig, DistEnv], TrainTask] | None) -> Trainer:
    """Set a run up for its first (or resumed) step: task, model, wrapping, optimizer, schedule, position, RNG."""
    from falconlm.train import checkpoint as ckpt
    from falconlm.train.distributed import enable_activation_checkpointing, resolve_strategy, wrap_model
    from falconlm.train.loss import HiddenStatesModel
    from falconlm.train.optim import build_optimizer
    from falconlm.train.task import pretraining_task

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # metrics or loss-curve writes of a killed run
    resume_from = _resume_point(cfg, env, ckpt_dir)
    strategy = resolve_strategy(cfg.strategy, env)
    precision = _precision(cfg, env.device)
    task = (make_task or pretraining_task)(cfg, env)
    saved = None
    if resume_from is not None:
        saved, rng = ckpt.load_trainer_state(resume_from, env)
        changed = cfg.resume_differences(saved.get("config", {}))
        if changed:
            raise FalconError(f"--resume from {resume_from} with other settings than the run's ({'; '.join(changed)}); "
                              f"rerun with the checkpoint's settings (they are in {out / 'run_config.yaml'}) or start a new --out; "
                              f"only {', '.join(TrainConfig.RESUME_OVERRIDABLE[:8])}, ... may change on resume")
    model, mconfig = _build_model(cfg, env, task, resume_from, precision, strategy)
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
    t = Trainer(cfg, env, task, mconfig, model, wrapped, train_forward, head_weight, optimizer, Schedule(cfg, env.world),
                strategy, precision, out, ckpt_dir, resume_from, last_checkpoint=resume_from)
    warn_short_run(t)
    if saved is not None:
        trainer = saved
        ckpt.load_optimizer_state(model, optimizer, trainer["optimizer"])
        t.step, t.tokens, t.samples = trainer["step"], trainer["tokens"], trainer["samples"]
        if rng is not None:
            ckpt.set_rng_state(rng)
        if env.is_main:
            print(f"resumed from {resume_from} at step {t.step} ({t.tokens:,} tokens)")
    else:
        torch.manual_seed(cfg.seed + env.rank)
        np.random.seed((cfg.seed + env.rank) % 2**32)
    if env.is_main:
        cfg.save(out / "run_config.yaml")
    return t
