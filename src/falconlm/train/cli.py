"""`falconlm pretrain --model PRESET_OR_CONFIG --data DIR --out DIR ...` (also under torchrun).

Every TrainConfig field is a flag (`--max-steps`, `--lr`, `--resume/--no-resume`, ...) and a key of
the `--config` YAML file; flags override the file, the file overrides the defaults.
"""

from __future__ import annotations

import argparse

from falconlm.configure import add_config_arguments, config_from_args
from falconlm.train.config import TrainConfig

ALIASES = {"progress_bar": "--no-progress"}  # the spelling users know


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of pretrain: one per TrainConfig field, plus --config."""
    add_config_arguments(parser, TrainConfig, aliases=ALIASES)


def config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: defaults < --config file < flags."""
    return config_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train."""
    from falconlm.train.loop import pretrain

    pretrain(config(args))
    return 0
