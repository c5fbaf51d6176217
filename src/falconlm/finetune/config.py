"""FinetuneConfig: what `falconlm finetune` does, on top of the TrainConfig of the loop it reuses."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.errors import FalconError
from falconlm.finetune.data import BAD_ACTIONS, OVERLONG_ACTIONS
from falconlm.finetune.lora import LoRAConfig
from falconlm.train.config import TrainConfig

# TrainConfig values that differ for fine-tuning (flags override them). lr / min_lr depend on --lora
# and seq_len on the model's context, so they are resolved in resolve().
TRAIN_DEFAULTS: dict[str, Any] = dict(
    global_batch_size=16, micro_batch_size=2, batch_rampup_tokens=0, weight_decay=0.0, z_loss=0.0,
    eval_interval=0, save_interval=500, keep_last=2, log_interval=10,
)
FULL_LR, LORA_LR = 2e-5, 2e-4


@dataclass
class FinetuneConfig:
    """A supervised fine-tuning run: base checkpoint, instruction data, LoRA or full weights, and the loop's TrainConfig."""

    checkpoint: str  # base HF Falcon directory (weights, tokenizer.json, optional chat template)
    data: list[str]  # JSONL(.gz) files of conversations
    out: str
    val_data: list[str] = field(default_factory=list)  # held-out conversations, loss on their answer tokens
    lora: LoRAConfig | None = None  # None = full fine-tuning
    packing: bool = True  # several samples per sequence, else one sample per right-padded sequence
    on_overlong: str = "truncate"  # truncate | skip samples longer than a sequence
    on_bad: str = "skip"  # skip | error on lines that are not usable samples
    mix_pretrain: str | None = None  # token-shard directory of plain text mixed in (Falcon-Instruct style)
    mix_fraction: float = 0.0  # share of training sequences that are plain-text windows
    epochs: float = 3.0  # run length when neither max_steps nor max_tokens is set
    warmup_fraction: float | None = 0.03  # warm-up as a share of the run (None: TrainConfig.warmup_tokens as given)
    train: TrainConfig = field(default_factory=TrainConfig)

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

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML, atomically."""
        import yaml

        from falconlm.atomic import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def train_config(checkpoint: str, out: str, lora: bool, max_position_embeddings: int, overrides: dict[str, Any]) -> TrainConfig:
    """The loop's config: fine-tuning defaults, then the non-None flags; lr, min_lr and seq_len resolved."""
    values = {**TRAIN_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    values.setdefault("lr", LORA_LR if lora else FULL_LR)
    values.setdefault("min_lr", min(values["lr"], 0.1 * values["lr"]))
    values.setdefault("seq_len", min(2048, max_position_embeddings))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FalconError(f"unknown training option(s): {', '.join(unknown)}")
    return TrainConfig(model=checkpoint, out=out, **values)
