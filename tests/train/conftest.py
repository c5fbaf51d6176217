"""Shared fixtures of the training tests: a tokenizer and token shards of the bundled sample corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from falconlm.tokenizer import train_tokenizer
from falconlm.train.config import TrainConfig
from falconlm.train.shards import ShardIndex, ShardInfo, write_token_shards

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sample_corpus.jsonl"


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """Token shards (train + 10% held out) of the sample corpus with a 500-token BPE vocabulary."""
    root = tmp_path_factory.mktemp("sample")
    texts = [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    train_tokenizer(texts, vocab_size=500, show_progress=False).save(root / "tok")
    write_token_shards([str(FIXTURE)], root / "tok", root / "shards", shard_tokens=30_000, val_fraction=0.1, progress=False)
    return root / "shards"


def write_raw_shards(out: Path, train: list[np.ndarray], val: list[np.ndarray] | None = None, vocab_size: int = 500) -> Path:
    """A shard directory holding exactly the given token arrays (no tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[ShardInfo]] = {"train": [], "val": []}
    for split, arrays in (("train", train), ("val", val or [])):
        for i, a in enumerate(arrays):
            name = f"{split}-{i:05d}.bin"
            np.asarray(a, dtype=np.uint16).tofile(out / name)
            splits[split].append(ShardInfo(name, len(a), 1))
    index = ShardIndex("uint16", vocab_size, 11, "test", 0.0, docs=len(train), splits=splits)
    (out / "index.json").write_text(json.dumps(index.to_dict()))
    return out


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    """A tiny-7b run of a few steps that finishes in about a second on CPU."""
    values = dict(
        model="tiny-7b", data=str(data), out=str(out), max_steps=6, seq_len=32, global_batch_size=8, micro_batch_size=2,
        batch_rampup_tokens=0, warmup_tokens=512, lr=3e-3, min_lr=3e-4, log_interval=1, eval_interval=0, save_interval=3,
        progress_bar=False, tensorboard=False, peak_flops=1e11,
    )
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_cfg():
    """The tiny_config factory (tests import nothing from conftest: pytest runs in importlib mode)."""
    return tiny_config


@pytest.fixture(scope="session")
def raw_shards():
    """The write_raw_shards factory."""
    return write_raw_shards
