"""`falconlm train-tokenizer CORPUS... --vocab-size 65024 --out DIR`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of train-tokenizer."""
    parser.add_argument("corpus", nargs="+", help="JSONL(.gz/.zst), Parquet or text files, or directories of them")
    parser.add_argument("--out", required=True, help="directory to write tokenizer.json + tokenizer_config.json")
    parser.add_argument("--vocab-size", type=int, default=65024, help="vocabulary size incl. the 12 special tokens (default 65024)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge (default 2)")
    parser.add_argument("--text-key", default="text", help="JSON/Parquet field holding the text (default 'text')")
    parser.add_argument("--max-docs", type=int, default=None, help="train on at most this many documents")


def run(args: argparse.Namespace) -> int:
    """Train the tokenizer and write its files."""
    import itertools
    import time

    from falconlm.tokenizer.corpus import expand_paths, iter_texts
    from falconlm.tokenizer.falcon import train_tokenizer

    files = expand_paths(args.corpus)
    counter = {"docs": 0, "chars": 0}

    def texts():
        stream = iter_texts(files, text_key=args.text_key)
        if args.max_docs is not None:
            stream = itertools.islice(stream, args.max_docs)
        for t in stream:
            counter["docs"] += 1
            counter["chars"] += len(t)
            yield t

    t0 = time.perf_counter()
    tok = train_tokenizer(texts(), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    path = tok.save(args.out)
    dt = time.perf_counter() - t0
    print(
        f"trained on {counter['docs']:,} documents ({counter['chars'] / 1e6:.1f} M chars) from {len(files)} files "
        f"in {dt:.1f} s: vocabulary {tok.vocab_size:,} tokens, <|endoftext|> = {tok.eot_id}; wrote {path}"
    )
    return 0
