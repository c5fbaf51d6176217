"""`falconlm finetune CHECKPOINT_DIR --data FILE... --out DIR [--lora ...]` (also under torchrun).

The flags come from FinetuneConfig: its own fields, `--lora` with `--lora.rank` & co. (also spelled
`--lora-rank`), and the training loop's TrainConfig as `--train.FIELD` (also spelled as in
`falconlm pretrain`: `--lr`, `--max-steps`, ...). A `--config` YAML file holds the same keys,
the loop's under `train:`.
"""

from __future__ import annotations

import argparse
import dataclasses

from falconlm.configure import add_config_arguments, config_from_args
from falconlm.train.cli import ALIASES as TRAIN_ALIASES
from falconlm.train.config import TrainConfig

# The loop's fields that do not apply here (the model is the checkpoint, the data are JSONL files).
SKIP = ("train.model", "train.data", "train.out", "train.sampling", "train.eval_batches")
ALIASES: dict[str, str | tuple[str, ...]] = {
    **{f"train.{f.name}": "--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)},
    **{f"train.{name}": ("--" + name.replace("_", "-"), flag) for name, flag in TRAIN_ALIASES.items()},
    **{f"lora.{name}": f"--lora-{name}" for name in ("rank", "alpha", "dropout", "targets")},
    "lora": "--lora",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the finetune options: one per FinetuneConfig field (the loop's included), plus --config."""
    from falconlm.finetune.config import DEFAULTS, FinetuneConfig

    add_config_arguments(parser, FinetuneConfig, aliases=ALIASES, defaults=DEFAULTS, skip=SKIP, positional=("checkpoint",))


def config(args: argparse.Namespace) -> "FinetuneConfig":  # noqa: F821 (imported lazily: torch)
    """The run's FinetuneConfig: defaults < --config file < flags, with the derived defaults filled from the checkpoint."""
    from falconlm.finetune.config import FinetuneConfig, resolve
    from falconlm.model.config import FalconConfig

    cfg = config_from_args(FinetuneConfig, args)
    return resolve(cfg, FalconConfig.from_json(cfg.checkpoint).max_position_embeddings)


def run(args: argparse.Namespace) -> int:
    """Resolve the config and fine-tune."""
    from falconlm.finetune.run import finetune

    finetune(config(args))
    return 0
