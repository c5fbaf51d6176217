"""`falconlm dedup`: MinHash, exact-substring and URL dedup over JSONL/Parquet shards.

Parse the flags, fill the config dataclasses (data/config.py), run the `dedup` recipe with the runner."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from falconlm.data.config import RefineConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `falconlm dedup` (no heavy imports here)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL(.gz/.zst) / Parquet files, globs or directories")
    p.add_argument("--out", required=True, help="run directory: output shards go to OUT/data, plus stats.json")
    g = p.add_argument_group("methods (none given: all three, RefinedWeb order)")
    g.add_argument("--minhash", metavar="PRESET", nargs="?", const="refinedweb",
                   help="fuzzy dedup: refinedweb (450x20, default), fineweb (14x8) or custom (with --bands/--rows)")
    g.add_argument("--exact-substring", action="store_true", help="cut spans of >= --min-tokens tokens that occur twice")
    g.add_argument("--url", action="store_true", help="keep the first document per normalised URL")
    m = p.add_argument_group("MinHash")
    m.add_argument("--bands", type=int, help="LSH bands (custom shape; implies --minhash)")
    m.add_argument("--rows", type=int, help="rows (hashes) per band (custom shape; implies --minhash)")
    m.add_argument("--ngram", type=int, default=5, help="shingle size (default 5)")
    m.add_argument("--seed", type=int, default=1, help="permutation seed (default 1)")
    m.add_argument("--tokenizer", help="tokenizer.json: shingle/match token ids instead of normalised words")
    m.add_argument("--bucket-groups", type=int, default=0, help="bucket tasks (default 16, at most one per band)")
    e = p.add_argument_group("exact substring")
    e.add_argument("--min-tokens", type=int, default=50, help="shortest duplicated span removed (default 50)")
    e.add_argument("--mode", default="cut", choices=["cut", "drop-any", "drop-partial"], help="default cut")
    e.add_argument("--min-chars", type=int, default=20, help="cut mode: drop documents left shorter (default 20)")
    e.add_argument("--max-duplicate-fraction", type=float, default=0.2, help="drop-partial threshold (default 0.2)")
    e.add_argument("--part-tokens", type=int, default=0, help="tokens per suffix-array part (default: from --memory-mb)")
    u = p.add_argument_group("URL")
    u.add_argument("--url-index", help="directory of the persistent index of URLs kept by earlier runs")
    r = p.add_argument_group("resources")
    r.add_argument("--workers", type=int, default=1, help="parallel tasks (default 1)")
    r.add_argument("--executor", default="local", choices=["local", "ray"], help="default local")
    r.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    r.add_argument("--memory-mb", type=int, default=2048, help="memory budget per task in MiB (default 2048)")
    r.add_argument("--format", default="jsonl.zst", help="output format: jsonl.zst, jsonl.gz, jsonl or parquet")
    r.add_argument("--text-key", default="text")
    r.add_argument("--id-key", default="id")
    r.add_argument("--write-removed", action="store_true", help="write OUT/removed/<stage>/*.jsonl: what was removed per document")
    r.add_argument("--estimate", type=int, metavar="N", help="print the disk/memory estimate for N documents and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_config(args: argparse.Namespace) -> RefineConfig:
    """The config of the `dedup` recipe from the parsed flags: dedup settings, input keys, output format."""
    from falconlm.data.config import DedupConfig, ExactSubstringConfig, MinHashConfig, RefineConfig, Resources, UrlDedupConfig
    from falconlm.data.readers import ReaderOptions
    from falconlm.errors import FalconError

    custom = args.bands is not None or args.rows is not None
    want_minhash = args.minhash is not None or custom
    if not (want_minhash or args.exact_substring or args.url):
        want_minhash = args.exact_substring = args.url = True
    minhash = None
    if want_minhash:
        if custom or args.minhash == "custom":
            if args.bands is None or args.rows is None:
                raise FalconError("a custom MinHash shape needs both --bands and --rows")
            minhash = MinHashConfig(bands=args.bands, rows=args.rows, ngram=args.ngram, seed=args.seed, tokenizer=args.tokenizer)
        else:
            minhash = MinHashConfig.preset(args.minhash or "refinedweb", ngram=args.ngram, seed=args.seed, tokenizer=args.tokenizer)
        minhash.validate()
    exact = None
    if args.exact_substring:
        exact = ExactSubstringConfig(args.min_tokens, args.mode, args.min_chars, args.max_duplicate_fraction, args.part_tokens, args.tokenizer)
        exact.validate()
    url = UrlDedupConfig(index=args.url_index) if args.url else None
    if args.memory_mb < 16:
        raise FalconError(f"--memory-mb {args.memory_mb} is too small: give at least 16")
    dedup = DedupConfig(minhash=minhash, exact_substring=exact, url=url, bucket_groups=args.bucket_groups,
                        resources=Resources(memory_mb=args.memory_mb, write_removed=args.write_removed))
    return RefineConfig(reader=ReaderOptions(text_key=args.text_key, id_key=args.id_key), output_format=args.format, dedup=dedup)


def run(args: argparse.Namespace) -> int:
    """Print the resource estimate, run the `dedup` recipe and print the summary."""
    from falconlm.data.dedup.estimate import count_documents, estimate, format_estimate
    from falconlm.data.executor import ExecConfig
    from falconlm.data.readers import expand_inputs
    from falconlm.data.refine import run_refine

    config = build_config(args)
    if args.estimate is not None:
        if config.dedup.minhash is not None:
            from falconlm.data.dedup.minhash import s_curve_table

            print(s_curve_table(config.dedup.minhash.bands, config.dedup.minhash.rows))
        print(format_estimate(estimate(config.dedup, args.estimate, workers=args.workers)))
        return 0
    n, avg = count_documents(expand_inputs(args.inputs), config.reader)
    print(format_estimate(estimate(config.dedup, n, avg or 3000.0, args.workers)), flush=True)
    exec_config = ExecConfig(workers=args.workers, executor=args.executor, ray_address=args.ray_address, progress=not args.no_progress)
    res = run_refine(args.inputs, args.out, recipe="dedup", config=config, exec_config=exec_config)
    print(res.summary())
    return 0
