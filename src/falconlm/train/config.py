"""TrainConfig: every knob of a pretraining run, with the Falcon-7B recipe as defaults.

`falconlm pretrain` fills it through falconlm.configure: dataclass defaults < YAML file
(`--config run.yaml`) < command-line flags (one per field, help from the comments below). The
resolved config is written as `run_config.yaml` next to the checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from falconlm import configure
from falconlm.errors import FalconError

Sampling = Literal["random", "sequential"]
Strategy = Literal["auto", "single", "ddp", "fsdp"]
Precision = Literal["auto", "fp32", "bf16-mixed", "bf16-true"]
SAMPLING, STRATEGIES, PRECISIONS = typing.get_args(Sampling), typing.get_args(Strategy), typing.get_args(Precision)


@dataclass
class TrainConfig:
    """A pretraining run. Defaults follow the Falcon-7B recipe; batch sizes are in sequences of seq_len tokens."""

    # what and where
    model: str = "falcon-7b"  # preset name (e.g. tiny-7b, falcon-7b), config.json path, or checkpoint directory (weights are then loaded)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # FalconConfig fields, e.g. num_hidden_layers=4
    data: str = ""  # token-shard directory written by `falconlm tokenize`
    out: str = "out/pretrain"  # run directory: checkpoints/, metrics.jsonl, run_config.yaml, loss_curve.png
    seed: int = 1234  # seed of initialisation and data order
    # length and batch
    seq_len: int = 2048  # tokens per sequence
    global_batch_size: int = 2304  # sequences per optimizer step, after ramp-up
    micro_batch_size: int = 1  # sequences per forward/backward per rank
    batch_rampup_tokens: float = 30e9  # global batch grows linearly over this many tokens (0 = off)
    batch_rampup_start: int | None = None  # first global batch; None = micro_batch_size x world size
    max_steps: int | None = None  # stop after this many optimizer steps...
    max_tokens: float | None = None  # ...or after this many training tokens (the first reached)
    # optimizer (AdamW) and schedule
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 1.2e-5  # final learning rate of the cosine
    warmup_tokens: float = 4e9  # linear warm-up from 0
    decay_tokens: float | None = None  # cosine ends here; None = the run's total tokens
    weight_decay: float = 0.1  # AdamW weight decay, on weight matrices only
    decay_embeddings: bool = False  # also decay the (tied) embedding matrix
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # max global L2 norm of the gradients; 0 = off
    z_loss: float = 1e-4  # coefficient x mean(logsumexp(logits)^2)
    # execution
    precision: Precision = "auto"  # auto: bf16-mixed on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda
    strategy: Strategy = "auto"  # auto: ddp under torchrun, single otherwise; fsdp = FSDP2 fully_shard per block
    activation_checkpointing: bool = False  # recompute block activations in backward
    compile: bool = False  # torch.compile the training forward
    fused_loss: bool = True  # LM head + loss in token chunks, logits never kept (single process and DDP)
    sampling: Sampling = "random"  # random windows, or sequential windows through the token stream
    # logging, evaluation, checkpoints
    log_interval: int = 10  # steps between console lines / metrics records
    eval_interval: int = 100  # held-out loss every N steps (0 = only at the end)
    eval_batches: int = 8  # micro-batches of held-out windows per evaluation
    save_interval: int = 1000  # steps between checkpoints (always one at the end)
    keep_last: int = 3  # checkpoints to keep
    resume: bool = False  # continue from the newest checkpoint in OUT/checkpoints
    tensorboard: bool = True  # write TensorBoard logs (when the tensorboard package is installed)
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; None = measured with a matmul at start
    progress_bar: bool = True  # show a progress bar
    force: bool = False  # start even when the memory estimate exceeds what the machine has left

    # What a resumed run may change (cadence of logging, evaluation and checkpoints, the run's length);
    # every other field must equal the checkpoint's, or the run would not continue the same training.
    RESUME_OVERRIDABLE = ("max_steps", "max_tokens", "log_interval", "eval_interval", "eval_batches", "save_interval", "keep_last",
                          "resume", "tensorboard", "peak_flops", "progress_bar", "force", "device", "compile", "strategy", "out", "data")

    def validate(self, require_data: bool = True) -> None:
        """Raise FalconError on values that cannot work (require_data=False: batches come from elsewhere, e.g. fine-tuning)."""
        if require_data and not self.data:
            raise FalconError("no training data: pass --data DIR (a directory written by `falconlm tokenize`)")
        if self.max_steps is None and self.max_tokens is None:
            raise FalconError("set a run length: --max-steps N or --max-tokens N")
        if self.max_steps is not None and self.max_steps < 1:
            raise FalconError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise FalconError(f"--max-tokens must be positive, got {self.max_tokens:g}")
        for name in ("seq_len", "global_batch_size", "micro_batch_size", "log_interval", "keep_last"):
            if getattr(self, name) < 1:
                raise FalconError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_tokens", "batch_rampup_tokens", "eval_interval", "save_interval", "eval_batches", "grad_clip", "z_loss", "weight_decay"):
            if getattr(self, name) < 0:
                raise FalconError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.sampling not in SAMPLING:
            raise FalconError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.strategy not in STRATEGIES:
            raise FalconError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise FalconError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise FalconError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return dataclasses.asdict(self)

    def resume_differences(self, saved: dict[str, Any]) -> list[str]:
        """The settings of this config that differ from a checkpoint's (`saved`: its to_dict()), ignoring RESUME_OVERRIDABLE."""
        out = []
        for name, value in self.to_dict().items():
            if name in self.RESUME_OVERRIDABLE or name not in saved:
                continue
            old = saved[name]
            same = float(old) == float(value) if isinstance(old, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool) else old == value
            if not same:
                out.append(f"{name} {old!r} -> {value!r}")
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML, atomically."""
        return configure.save_config(self, path)

    @classmethod
    def from_sources(cls, yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults, then the YAML file, then the non-None overrides: `--config` and flags, from Python."""
        data = configure.load_yaml(yaml_path) if yaml_path else {}
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return configure.build(cls, data, given, source=str(yaml_path or "the config"))
