"""FinetuneConfig: what `falconlm finetune` does, on top of the TrainConfig of the loop it reuses."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.configure import Derived, save_config
from falconlm.errors import FalconError
from falconlm.finetune.data import BAD_ACTIONS, OVERLONG_ACTIONS
from falconlm.finetune.lora import LoRAConfig
from falconlm.train.config import TrainConfig

FULL_LR, LORA_LR = 2e-5, 2e-4

# TrainConfig values that differ for fine-tuning (flags and the YAML file override them). The ones
# shown as Derived depend on other choices (LoRA or not, the model's context, the run's length) and
# are filled by resolve() once the checkpoint is known.
DEFAULTS: dict[str, Any] = {
    "train.global_batch_size": 16, "train.micro_batch_size": 2, "train.batch_rampup_tokens": 0.0, "train.weight_decay": 0.0,
    "train.z_loss": 0.0, "train.eval_interval": 0, "train.save_interval": 500, "train.keep_last": 2, "train.log_interval": 10,
    "train.lr": Derived(f"{FULL_LR:g}, {LORA_LR:g} with --lora"), "train.min_lr": Derived("lr / 10"),
    "train.seq_len": Derived("min(2048, the model's context)"), "train.warmup_tokens": Derived("--warmup-fraction of the run"),
    "warmup_fraction": Derived("0.03 unless --warmup-tokens is given"),
}


@dataclass
class FinetuneConfig:
    """A supervised fine-tuning run: base checkpoint, instruction data, LoRA or full weights, and the loop's TrainConfig."""

    checkpoint: str  # base checkpoint directory (HF Falcon: config.json, safetensors, tokenizer.json, optional chat template)
    data: list[str]  # JSONL(.gz) conversations: messages | instruction/input/output | prompt/response
    out: str  # run directory (checkpoints/, metrics.jsonl, data_report.json, model/ or adapter/)
    val_data: list[str] = field(default_factory=list)  # held-out conversations, loss on their answer tokens
    lora: LoRAConfig | None = None  # train low-rank adapters on frozen base weights; off = all weights
    packing: bool = True  # several samples per sequence, else one sample per right-padded sequence
    on_overlong: str = field(default="truncate", metadata={"choices": OVERLONG_ACTIONS})  # a sample longer than a sequence
    on_bad: str = field(default="skip", metadata={"choices": BAD_ACTIONS})  # a line that is no usable sample: report and skip, or stop
    mix_pretrain: str | None = None  # token shards (`falconlm tokenize`, same tokenizer) of plain text mixed in (Falcon-Instruct style)
    mix_fraction: float = 0.0  # share of training sequences that are plain-text windows (e.g. 0.05)
    epochs: float = 3.0  # passes over the data when neither max_steps nor max_tokens is set
    warmup_fraction: float | None = 0.03  # LR warm-up as a share of the run (None: train.warmup_tokens as given)
    train: TrainConfig = field(default_factory=TrainConfig)  # the training loop, as `falconlm pretrain`

    def validate(self) -> None:
        """Raise FalconError on values that cannot work."""
        if not self.data:
            raise FalconError("no training data: pass --data FILE.jsonl [FILE ...]")
        if self.on_overlong not in OVERLONG_ACTIONS:
            raise FalconError(f"--on-overlong must be one of {', '.join(OVERLONG_ACTIONS)}, got {self.on_overlong!r}")
        if self.on_bad not in BAD_ACTIONS:
            raise FalconError(f"--on-bad must be one of {', '.join(BAD_ACTIONS)}, got {self.on_bad!r}")
        if not 0.0 <= self.mix_fraction < 1.0:
            raise FalconError(f"--mix-fraction must be in [0, 1), got {self.mix_fraction}")
        if self.mix_fraction > 0 and not self.mix_pretrain:
            raise FalconError("--mix-fraction needs --mix-pretrain TOKEN_DIR (token shards from `falconlm tokenize`)")
        if self.mix_pretrain and self.mix_fraction <= 0:
            raise FalconError("--mix-pretrain needs --mix-fraction F > 0, the share of sequences that are plain text (e.g. 0.05)")
        if self.epochs <= 0:
            raise FalconError(f"--epochs must be positive, got {self.epochs}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise FalconError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.lora is not None:
            self.lora.validate()
            if self.train.strategy == "fsdp":
                raise FalconError("--lora runs in one process or with DDP (torchrun); --strategy fsdp is not supported with it")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML, atomically."""
        return save_config(self, path)


def resolve(cfg: FinetuneConfig, max_position_embeddings: int) -> FinetuneConfig:
    """Fill what the command line left to be derived (None): lr and min_lr by LoRA or not, seq_len by the model's context, the warm-up."""
    tc = cfg.train
    tc.model, tc.out = cfg.checkpoint, cfg.out
    if tc.lr is None:
        tc.lr = LORA_LR if cfg.lora is not None else FULL_LR
    if tc.min_lr is None:
        tc.min_lr = min(tc.lr, 0.1 * tc.lr)
    if tc.seq_len is None:
        tc.seq_len = min(2048, max_position_embeddings)
    if tc.warmup_tokens is None and cfg.warmup_fraction is None:
        cfg.warmup_fraction = 0.03
    if cfg.lora is not None:  # targets may also be given comma-separated, as `--lora-targets a,b`
        cfg.lora.targets = [t.strip() for item in cfg.lora.targets for t in item.split(",") if t.strip()]
    return cfg
