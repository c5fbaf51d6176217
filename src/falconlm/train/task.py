"""What a training run reads and how its model is built and saved: pretraining on token shards by default.

The loop (train/loop.py) is the same for pretraining and fine-tuning. Every batch is a Batch: a pair
(input_ids, labels) of (micro, T) arrays whose label t is the target at position t, IGNORE_INDEX
(-100) where no loss is taken. Pretraining windows are such pairs with every next token a target;
fine-tuning rows ignore prompts and padding. A TrainTask tells the loop where the batches come from
and, when the run is not a plain full-weight one (LoRA), how the model is loaded and what a
checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from falconlm.train.config import TrainConfig
from falconlm.train.distributed import DistEnv

Batch = tuple[np.ndarray, np.ndarray]  # (input_ids, labels), both (micro, T) int64


class MicroBatches(Protocol):
    """The training batches of a run, by optimizer step (BatchSource's windows, fine-tuning's SFTBatches)."""

    def rank_micro_batches(self, step: int, samples_before: int, batch: int) -> list[Batch]:
        """This rank's micro-batches of `step`, whose global batch of `batch` sequences starts at sample `samples_before`."""
        ...


@dataclass
class TrainTask:
    """The loop's inputs besides TrainConfig."""

    name: str  # progress bar and console prefix: "pretrain", "finetune"
    batches: MicroBatches
    heldout: Batch | None  # every held-out row, evaluated in micro-batches; None = no evaluation
    vocab_size: int  # ids the data may hold; must fit the model
    data_name: str  # where the data comes from, for messages
    description: str  # the data part of the run's header line
    tokenizer_dir: Path | None  # tokenizer (and chat template) files copied into every checkpoint
    # (resume_from or None, dtype, device) -> the model to train; None = the pretraining rule (preset or weights)
    load_model: Callable[[Path | None, torch.dtype, torch.device], nn.Module] | None = None
    # (directory, full state dict) -> writes the model part of a checkpoint; None = an HF model directory
    write_model: Callable[[Path, dict[str, torch.Tensor]], None] | None = None
    trainable_fraction: float = 1.0  # share of the parameters trained (LoRA: the adapters'), for the memory estimate


def pretraining_task(cfg: TrainConfig, env: DistEnv) -> TrainTask:
    """Random or sequential windows of the token shards in cfg.data, held-out windows from their val split."""
    from falconlm.train.data import BatchSource, TokenWindows, WindowBatches, heldout_windows, shift
    from falconlm.train.shards import ShardIndex

    index = ShardIndex.load(cfg.data)
    windows = TokenWindows(cfg.data, "train", cfg.seq_len)
    heldout = heldout_windows(cfg.data, cfg.seq_len, cfg.eval_batches * cfg.micro_batch_size)
    tok = Path(cfg.data) / "tokenizer"
    return TrainTask(
        name="pretrain",
        batches=WindowBatches(BatchSource(windows, cfg.sampling, cfg.seed, env.rank, env.world, cfg.micro_batch_size)),
        heldout=shift(heldout) if heldout is not None else None,
        vocab_size=index.vocab_size,
        data_name=f"the tokenizer of {cfg.data}",
        description=f"{windows.tokens:,} train tokens",
        tokenizer_dir=tok if (tok / "tokenizer.json").is_file() else None,
    )
