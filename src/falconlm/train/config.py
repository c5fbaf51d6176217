"""TrainConfig: every knob of a pretraining run, with the Falcon-7B recipe as defaults.

Precedence: dataclass defaults < YAML file (`--config run.yaml`) < command-line flags. The
resolved config is written as `run_config.yaml` next to the checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.errors import FalconError

SAMPLING = ("random", "sequential")
STRATEGIES = ("auto", "single", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16-true")


@dataclass
class TrainConfig:
    """A pretraining run. Defaults follow Falcon-7B (falcon-facts D); sizes are in sequences of seq_len."""

    # what and where
    model: str = "falcon-7b"  # preset name, config.json path, or checkpoint directory (weights are then loaded)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # FalconConfig fields, e.g. {num_hidden_layers: 4}
    data: str = ""  # token-shard directory written by `falconlm tokenize`
    out: str = "out/pretrain"
    seed: int = 1234
    # length and batch
    seq_len: int = 2048
    global_batch_size: int = 2304  # sequences per optimizer step, after ramp-up
    micro_batch_size: int = 1  # sequences per forward/backward per rank
    batch_rampup_tokens: float = 30e9  # global batch grows linearly over this many tokens (0 = off)
    batch_rampup_start: int | None = None  # first global batch; None = micro_batch_size x world size
    max_steps: int | None = None  # stop after this many optimizer steps...
    max_tokens: float | None = None  # ...or after this many training tokens (the first reached)
    # optimizer (AdamW) and schedule
    lr: float = 6e-4
    min_lr: float = 1.2e-5
    warmup_tokens: float = 4e9  # linear warm-up from 0
    decay_tokens: float | None = None  # cosine ends here; None = the run's total tokens
    weight_decay: float = 0.1  # on weight matrices only
    decay_embeddings: bool = False  # also decay the (tied) embedding matrix
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global L2 norm; 0 = off
    z_loss: float = 1e-4  # coefficient x mean(logsumexp(logits)^2)
    # execution
    precision: str = "auto"  # auto: bf16-mixed on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "auto"  # auto: ddp under torchrun, single otherwise; fsdp = FSDP2 fully_shard per block
    activation_checkpointing: bool = False
    compile: bool = False
    fused_loss: bool = True  # LM head + loss in token chunks, logits never kept (single process and DDP)
    sampling: str = "random"  # random windows, or sequential windows through the token stream
    # logging, evaluation, checkpoints
    log_interval: int = 10
    eval_interval: int = 100  # held-out loss every N steps (0 = only at the end)
    eval_batches: int = 8  # micro-batches of held-out windows per evaluation
    save_interval: int = 1000
    keep_last: int = 3
    resume: bool = False
    tensorboard: bool = True  # when the tensorboard package is installed
    peak_flops: float | None = None  # per device, for MFU; None = measured with a matmul at start
    progress_bar: bool = True

    def validate(self, require_data: bool = True) -> None:
        """Raise FalconError on values that cannot work (require_data=False: batches come from elsewhere, e.g. fine-tuning)."""
        if require_data and not self.data:
            raise FalconError("no training data: pass --data DIR (a directory written by `falconlm tokenize`)")
        if self.max_steps is None and self.max_tokens is None:
            raise FalconError("set a run length: --max-steps N or --max-tokens N")
        for name in ("seq_len", "global_batch_size", "micro_batch_size", "log_interval", "keep_last"):
            if getattr(self, name) < 1:
                raise FalconError(f"{name} must be at least 1, got {getattr(self, name)}")
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

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML, atomically."""
        import yaml

        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, p)

    @classmethod
    def from_sources(cls, yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults, then the YAML file, then the non-None overrides (command-line flags)."""
        values: dict[str, Any] = {}
        if yaml_path:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FalconError(f"unknown training option(s): {', '.join(unknown)}")
        cfg = cls(**values)
        for f in dataclasses.fields(cls):
            v = getattr(cfg, f.name)
            # YAML writes 4e9 as a string unless it has a dot; coerce numerics to their declared types.
            if isinstance(v, str) and f.type in ("float", "float | None", "int", "int | None"):
                try:
                    setattr(cfg, f.name, float(v) if "float" in f.type else int(float(v)))
                except ValueError as exc:
                    raise FalconError(f"{f.name} must be a number, got {v!r}") from exc
        return cfg


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML run file into a dict with a clear error on bad syntax."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FalconError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FalconError(f"{p} is not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise FalconError(f"{p} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}
