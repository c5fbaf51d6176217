"""`falconlm tokenize CORPUS... --tokenizer DIR --out DIR [--workers N]`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from falconlm.configure import add_config_arguments, config_from_args, save_config

CONFIG_FILE = "tokenize_config.yaml"  # the resolved config, next to index.json


@dataclass
class TokenizeConfig:
    """A tokenization run: corpus files in, packed token shards + index.json out."""

    corpus: list[str]  # JSONL(.gz/.zst), Parquet or text files, or directories of them
    tokenizer: str  # directory with tokenizer.json (from train-tokenizer)
    out: str  # output directory for the shards and index.json
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))  # encoding processes (all cores)
    val_fraction: float = 0.005  # fraction of documents held out
    shard_tokens: int = 100_000_000  # tokens per shard file
    text_key: str = "text"  # JSON/Parquet field holding the text
    overwrite: bool = False  # redo a finished or partial tokenization from scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of tokenize: one per TokenizeConfig field, plus --config."""
    add_config_arguments(parser, TokenizeConfig, positional=("corpus",))


def config(args: argparse.Namespace) -> TokenizeConfig:
    """The run's TokenizeConfig: defaults < --config file < flags."""
    return config_from_args(TokenizeConfig, args)


def run(args: argparse.Namespace) -> int:
    """Tokenize, write the resolved config next to the index, and print a summary."""
    import time

    from falconlm.train.shards import write_token_shards

    cfg = config(args)
    t0 = time.perf_counter()
    index = write_token_shards(
        cfg.corpus,
        cfg.tokenizer,
        cfg.out,
        workers=cfg.workers,
        shard_tokens=cfg.shard_tokens,
        val_fraction=cfg.val_fraction,
        text_key=cfg.text_key,
        overwrite=cfg.overwrite,
    )
    dt = time.perf_counter() - t0
    save_config(cfg, os.path.join(cfg.out, CONFIG_FILE))
    n_tr, n_va = index.tokens("train"), index.tokens("val")
    print(
        f"{index.docs:,} documents -> {n_tr:,} train tokens in {len(index.splits['train'])} shards, "
        f"{n_va:,} held-out tokens in {len(index.splits['val'])} shards ({index.dtype}); "
        f"{(n_tr + n_va) / max(dt, 1e-9) / 1e6:.2f} M tokens/s; wrote {cfg.out}/index.json"
    )
    return 0
