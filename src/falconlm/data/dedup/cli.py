"""`falconlm dedup`: MinHash, exact-substring and URL dedup over JSONL/Parquet shards.

The flags come from dataclasses through falconlm.configure, as in `falconlm refine`: `DedupCommand`
(inputs, output directory, `--estimate`), the part of `RefineConfig` the `dedup` recipe reads
(`--dedup.minhash.bands`, also `--bands`; `--reader.text-key`, also `--text-key`; `--format`...)
and `ExecConfig` (`--workers`...). Two shortcuts are not fields: `--minhash [PRESET]` names a
MinHash shape, `--tokenizer` sets the tokenizer of both methods that use one.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from falconlm.configure import add_config_arguments, config_from_args
from falconlm.data.cli import NOT_FLAGS, add_exec_arguments

if TYPE_CHECKING:
    from falconlm.data.config import RefineConfig

METHODS = ("minhash", "exact_substring", "url")  # DedupConfig's sections, in the order they run
# RefineConfig paths -> the spellings `falconlm dedup` has always accepted.
ALIASES: dict[str, str | tuple[str, ...]] = {
    "dedup.minhash": "--no-minhash",  # switching it on is --minhash [PRESET]
    "dedup.minhash.bands": "--bands",
    "dedup.minhash.rows": "--rows",
    "dedup.minhash.ngram": "--ngram",
    "dedup.minhash.seed": "--seed",
    "dedup.bucket_groups": "--bucket-groups",
    "dedup.exact_substring": "--exact-substring",
    "dedup.exact_substring.min_tokens": "--min-tokens",
    "dedup.exact_substring.mode": "--mode",
    "dedup.exact_substring.min_chars": "--min-chars",
    "dedup.exact_substring.max_duplicate_fraction": "--max-duplicate-fraction",
    "dedup.exact_substring.part_tokens": "--part-tokens",
    "dedup.url": "--url",
    "dedup.url.index": "--url-index",
    "dedup.resources.memory_mb": "--memory-mb",
    "dedup.resources.write_removed": "--write-removed",
    "output_format": "--format",
    "reader.text_key": "--text-key",
    "reader.id_key": "--id-key",
    "reader.limit": "--limit",
}


@dataclass
class DedupCommand:
    """What `falconlm dedup` reads and where it writes, or the estimate it prints instead."""

    inputs: list[str]  # JSONL(.gz/.zst) / Parquet files, globs or directories
    out: str  # run directory: output shards go to OUT/data, plus stats.json, config.json, report.html
    estimate: int | None = None  # print the disk/memory estimate for this many documents and exit
    recipe: Literal["dedup"] = "dedup"  # not a flag: the key config.json holds, so that the file reads back as --config


def _not_read_by_dedup() -> tuple[str, ...]:
    """RefineConfig paths the `dedup` recipe never reads (the filter steps' sections): no flags here."""
    from falconlm.configure import leaves
    from falconlm.data.config import RefineConfig

    used = ("dedup.", "reader.", "output_format")
    return NOT_FLAGS + tuple(leaf.path for leaf in leaves(RefineConfig) if not leaf.path.startswith(used))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `falconlm dedup`: DedupCommand's, RefineConfig's dedup/reader/output fields, ExecConfig's, two shortcuts."""
    from falconlm.data.config import PRESETS, RefineConfig

    add_config_arguments(p, DedupCommand, positional=("inputs",), skip=("recipe",))
    add_config_arguments(p, RefineConfig, aliases=ALIASES, skip=_not_read_by_dedup())
    p.add_argument("--minhash", dest="minhash_preset", metavar="PRESET", nargs="?", const="refinedweb",
                   help=f"run MinHash with a named shape: {', '.join(f'{k} ({b}x{r})' for k, (b, r) in PRESETS.items())}, "
                        "or custom (with --bands and --rows); no preset: refinedweb")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json: shingle and match token ids instead of normalised words "
                   "(sets dedup.minhash.tokenizer and dedup.exact-substring.tokenizer)")
    add_exec_arguments(p)


def build_config(args: argparse.Namespace) -> RefineConfig:
    """The config of the `dedup` recipe: defaults < --config YAML < flags, then the method choice.

    Methods named on the command line (`--minhash`, `--exact-substring`, `--url`, or a MinHash
    shape `--bands/--rows`) run alone; when none is named, those the config holds run (all three by default).
    """
    from falconlm.data.config import MinHashConfig, RefineConfig
    from falconlm.errors import FalconError

    cfg = config_from_args(RefineConfig, args)
    d = cfg.dedup
    shape = [k for k in ("bands", "rows") if hasattr(args, f"dedup.minhash.{k}")]
    preset = getattr(args, "minhash_preset", None)
    named = {m for m in METHODS if getattr(args, f"dedup.{m}", None) is True}
    if preset is not None or shape:
        named.add("minhash")
    for method in set(METHODS) - named if named else ():
        setattr(d, method, None)
    if preset is not None and d.minhash is None:  # named by its shortcut while the YAML file had it off
        d.minhash = MinHashConfig()
    if d.minhash is not None:
        if shape or preset == "custom":
            if len(shape) < 2:
                raise FalconError("a custom MinHash shape needs both --bands and --rows")
        elif preset is not None:
            named_shape = MinHashConfig.preset(preset)
            d.minhash = dataclasses.replace(d.minhash, bands=named_shape.bands, rows=named_shape.rows)
        d.minhash.validate()
    tokenizer = getattr(args, "tokenizer", None)
    for method in (d.minhash, d.exact_substring):
        if method is not None and tokenizer:
            method.tokenizer = tokenizer
    if d.exact_substring is not None:
        d.exact_substring.validate()
    if d.resources.memory_mb < 16:
        raise FalconError(f"--memory-mb {d.resources.memory_mb:g} is too small: give at least 16")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Print the resource estimate, run the `dedup` recipe and print the summary."""
    from falconlm.data.dedup.estimate import count_documents, estimate, format_estimate
    from falconlm.data.executor import ExecConfig
    from falconlm.data.readers import expand_inputs
    from falconlm.data.refine import run_refine

    cmd = config_from_args(DedupCommand, args)
    config = build_config(args)
    exec_config = config_from_args(ExecConfig, args, section="exec")
    if cmd.estimate is not None:
        if config.dedup.minhash is not None:
            from falconlm.data.dedup.minhash import s_curve_table

            print(s_curve_table(config.dedup.minhash.bands, config.dedup.minhash.rows))
        print(format_estimate(estimate(config.dedup, cmd.estimate, workers=exec_config.workers)))
        return 0
    n, avg = count_documents(expand_inputs(cmd.inputs), config.reader)
    print(format_estimate(estimate(config.dedup, n, avg or 3000.0, exec_config.workers)), flush=True)
    res = run_refine(cmd.inputs, cmd.out, recipe="dedup", config=config, exec_config=exec_config)
    print(res.summary())
    return 0
