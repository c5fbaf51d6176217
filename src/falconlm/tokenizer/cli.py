"""`falconlm train-tokenizer CORPUS... --vocab-size 65024 --out DIR`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from falconlm.configure import add_config_arguments, config_from_args, save_config

CONFIG_FILE = "train_tokenizer_config.yaml"  # the resolved config, next to tokenizer.json


@dataclass
class TrainTokenizerConfig:
    """A BPE training run: corpus files in, tokenizer.json + tokenizer_config.json out."""

    corpus: list[str]  # JSONL(.gz/.zst), Parquet or text files, or directories of them
    out: str  # directory to write tokenizer.json + tokenizer_config.json
    vocab_size: int = 65024  # vocabulary size incl. the 12 special tokens
    min_frequency: int = 2  # minimum pair count for a merge
    text_key: str = "text"  # JSON/Parquet field holding the text
    max_docs: int | None = None  # train on at most this many documents (None = all)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of train-tokenizer: one per TrainTokenizerConfig field, plus --config."""
    add_config_arguments(parser, TrainTokenizerConfig, positional=("corpus",))


def config(args: argparse.Namespace) -> TrainTokenizerConfig:
    """The run's TrainTokenizerConfig: defaults < --config file < flags."""
    return config_from_args(TrainTokenizerConfig, args)


def run(args: argparse.Namespace) -> int:
    """Train the tokenizer and write its files and the resolved config."""
    import itertools
    import time

    from falconlm.tokenizer.corpus import expand_paths, iter_texts
    from falconlm.tokenizer.falcon import train_tokenizer

    cfg = config(args)
    files = expand_paths(cfg.corpus)
    counter = {"docs": 0, "chars": 0}

    def texts():
        stream = iter_texts(files, text_key=cfg.text_key)
        if cfg.max_docs is not None:
            stream = itertools.islice(stream, cfg.max_docs)
        for t in stream:
            counter["docs"] += 1
            counter["chars"] += len(t)
            yield t

    t0 = time.perf_counter()
    tok = train_tokenizer(texts(), vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    path = tok.save(cfg.out)
    save_config(cfg, Path(cfg.out) / CONFIG_FILE)
    dt = time.perf_counter() - t0
    print(
        f"trained on {counter['docs']:,} documents ({counter['chars'] / 1e6:.1f} M chars) from {len(files)} files "
        f"in {dt:.1f} s: vocabulary {tok.vocab_size:,} tokens, <|endoftext|> = {tok.eot_id}; wrote {path}"
    )
    return 0
