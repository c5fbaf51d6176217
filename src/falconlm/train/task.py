"""What a training run reads and how its model is built and saved: pretraining on token shards by default.

The loop (train/loop.py) is the same for pretraining and fine-tuning; a TrainTask tells it where the
batches come from, whether they carry their own labels, and, when the run is not a plain full-weight
one (LoRA), how the model is loaded and what a checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from falconlm.train.config import TrainConfig
from falconlm.train.distributed import DistEnv


@dataclass
class TrainTask:
    """The loop's inputs besides TrainConfig.

    `batches.rank_micro_batches(step, samples_before, batch)` returns this rank's micro-batches of a
    step, as BatchSource does: windows (micro, seq_len + 1) when `labelled` is False, else
    (input_ids, labels) pairs of (micro, T) arrays whose labels are already shifted (label t is the
    target at position t) and hold IGNORE_INDEX (-100) where no loss is taken. `heldout` is a windows
    array, an (input_ids, labels) pair of arrays, or None.
    """

    name: str  # progress bar and console prefix: "pretrain", "finetune"
    batches: Any
    heldout: Any
    labelled: bool
    vocab_size: int  # ids the data may hold; must fit the model
    data_name: str  # where the data comes from, for messages
    description: str  # the data part of the run's header line
    tokenizer_dir: Path | None  # tokenizer (and chat template) files copied into every checkpoint
    # (resume_from or None, dtype, device) -> the model to train; None = the pretraining rule (preset or weights)
    load_model: Callable[[Path | None, torch.dtype, torch.device], nn.Module] | None = None
    # (directory, full state dict) -> writes the model part of a checkpoint; None = an HF model directory
    write_model: Callable[[Path, dict[str, torch.Tensor]], None] | None = None


def pretraining_task(cfg: TrainConfig, env: DistEnv) -> TrainTask:
    """Random or sequential windows of the token shards in cfg.data, held-out windows from their val split."""
    from falconlm.train.data import BatchSource, TokenWindows, heldout_windows
    from falconlm.train.shards import ShardIndex

    index = ShardIndex.load(cfg.data)
    windows = TokenWindows(cfg.data, "train", cfg.seq_len)
    tok = Path(cfg.data) / "tokenizer"
    return TrainTask(
        name="pretrain",
        batches=BatchSource(windows, cfg.sampling, cfg.seed, env.rank, env.world, cfg.micro_batch_size),
        heldout=heldout_windows(cfg.data, cfg.seq_len, cfg.eval_batches * cfg.micro_batch_size),
        labelled=False,
        vocab_size=index.vocab_size,
        data_name=f"the tokenizer of {cfg.data}",
        description=f"{windows.tokens:,} train tokens",
        tokenizer_dir=tok if (tok / "tokenizer.json").is_file() else None,
    )
