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
    """Train the tokenizer and write its files and the resolved config; zero usable documents is an error, skips are reported."""
    import itertools
    import time

    from falconlm.atomic import output_dir
    from falconlm.data.readers import ReadReport
    from falconlm.tokenizer.corpus import expand_paths, iter_texts, text_key_hint
    from falconlm.tokenizer.falcon import train_tokenizer

    cfg = config(args)
    files = expand_paths(cfg.corpus)
    counter = {"docs": 0, "chars": 0}
    report = ReadReport(strict=True)

    def texts():
        stream = iter_texts(files, text_key=cfg.text_key, report=report)
        if cfg.max_docs is not None:
            stream = itertools.islice(stream, cfg.max_docs)
        for t in stream:
            counter["docs"] += 1
            counter["chars"] += len(t)
            yield t

    t0 = time.perf_counter()
    # A corrupt file stops the training (the reader raises through it); nothing is written before the checks pass.
    tok = train_tokenizer(texts(), vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    report.require_documents(hint=text_key_hint(cfg.text_key))
    with output_dir(cfg.out):
        path = tok.save(cfg.out)
        save_config(cfg, Path(cfg.out) / CONFIG_FILE)
    dt = time.perf_counter() - t0
    if report.summary():
        print(report.summary())
    short = f" (the corpus holds too few distinct pairs for the {cfg.vocab_size:,} asked for)" if tok.vocab_size < cfg.vocab_size else ""
    print(
        f"trained on {counter['docs']:,} documents ({counter['chars'] / 1e6:.1f} M chars) from {len(files)} files "
        f"in {dt:.1f} s: vocabulary {tok.vocab_size:,} tokens{short}, <|endoftext|> = {tok.eot_id}; wrote {path}"
    )
    return 0
