"""`falconlm tokenize CORPUS... --tokenizer DIR --out DIR [--workers N]`."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of tokenize."""
    parser.add_argument("corpus", nargs="+", help="JSONL(.gz/.zst), Parquet or text files, or directories of them")
    parser.add_argument("--tokenizer", required=True, help="directory with tokenizer.json (from train-tokenizer)")
    parser.add_argument("--out", required=True, help="output directory for the shards and index.json")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="encoding processes (default: all cores)")
    parser.add_argument("--val-fraction", type=float, default=0.005, help="fraction of documents held out (default 0.005)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default 1e8)")
    parser.add_argument("--text-key", default="text", help="JSON/Parquet field holding the text (default 'text')")
    parser.add_argument("--overwrite", action="store_true", help="redo a finished or partial tokenization from scratch")


def run(args: argparse.Namespace) -> int:
    """Tokenize and print a summary."""
    import time

    from falconlm.train.shards import write_token_shards

    t0 = time.perf_counter()
    index = write_token_shards(
        args.corpus,
        args.tokenizer,
        args.out,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction,
        text_key=args.text_key,
        overwrite=args.overwrite,
    )
    dt = time.perf_counter() - t0
    n_tr, n_va = index.tokens("train"), index.tokens("val")
    print(
        f"{index.docs:,} documents -> {n_tr:,} train tokens in {len(index.splits['train'])} shards, "
        f"{n_va:,} held-out tokens in {len(index.splits['val'])} shards ({index.dtype}); "
        f"{(n_tr + n_va) / max(dt, 1e-9) / 1e6:.2f} M tokens/s; wrote {args.out}/index.json"
    )
    return 0
