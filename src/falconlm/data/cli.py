"""`falconlm refine`: raw web pages (WARC / JSONL / Parquet) -> clean, filtered text shards.

The flags come from three dataclasses through falconlm.configure: `RefineCommand` (inputs, output
directory, recipe), `RefineConfig` (data/config.py: every threshold, as `--section.field`, e.g.
`--quality.min-doc-words 40`, with the spellings users know as aliases: `--languages`, `--format`...)
and `ExecConfig` (executor.py, as `--exec.field`, also spelled `--workers`, `--executor`...). A
`--config` YAML file holds RefineConfig's keys at the top level and ExecConfig's under `exec:`.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from falconlm import configure
from falconlm.configure import Derived, add_config_arguments, config_from_args
from falconlm.errors import FalconError

SAMPLE = ("sample", "sample.warc.gz")
FILTER_RECIPE = "refinedweb-filter"  # what --no-dedup runs
# Internals of one task, set by the runner for each slice of a file: never flags.
NOT_FLAGS = ("reader.slice_index", "reader.num_slices")
# RefineConfig paths -> the spellings `falconlm refine` has always accepted.
ALIASES: dict[str, str | tuple[str, ...]] = {
    "extract.extractor": "--extractor",
    "language.languages": "--languages",
    "reader.limit": "--limit",
    "reader.text_key": "--text-key",
    "reader.id_key": "--id-key",
    "url.blocklist_dir": "--url-blocklist",
    "output_format": "--format",
    "keep_dropped": "--keep-dropped",
    "slices_per_file": "--slices-per-file",
}
EXEC_ALIASES: dict[str, str | tuple[str, ...]] = {
    "workers": "--workers", "executor": "--executor", "ray_address": "--ray-address", "progress": "--no-progress",
}


@dataclass
class RefineCommand:
    """What `falconlm refine` reads, where it writes, and which recipe it runs."""

    inputs: list[str] = field(default_factory=list)  # files, globs or directories (WARC, JSONL, Parquet)
    out: str | None = None  # output directory: shards in OUT/data, stats.json, config.json, report.html
    sample: bool = False  # add the bundled sample WARC to the inputs
    recipe: str = "refinedweb"  # refinedweb (filters, then dedup) or refinedweb-filter (filters only)


def sample_path() -> Path:
    """The bundled sample WARC."""
    return Path(str(resources.files("falconlm.assets").joinpath(*SAMPLE)))


def add_exec_arguments(parser: argparse.ArgumentParser) -> None:
    """ExecConfig's flags (`--exec.workers`, also `--workers`, ...), shared by refine and dedup."""
    from falconlm.data.executor import ExecConfig

    add_config_arguments(parser, ExecConfig, section="exec", aliases=EXEC_ALIASES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `falconlm refine`: RefineCommand's, RefineConfig's and ExecConfig's fields, plus two shortcuts."""
    from falconlm.data.config import RefineConfig

    add_config_arguments(p, RefineCommand, positional=("inputs",), defaults={"out": Derived("out/refine-sample with --sample, else required")})
    p.add_argument("--no-dedup", action="store_true", help=f"filter only: the same as --recipe {FILTER_RECIPE}")
    add_config_arguments(p, RefineConfig, aliases=ALIASES, skip=NOT_FLAGS)
    add_exec_arguments(p)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="another spelling of --section.field VALUE, e.g. --set quality.min_doc_words=40")


# ---------------------------------------------------------------------------- --set

def apply_sets(args: argparse.Namespace, items: list[str]) -> argparse.Namespace:
    """A copy of `args` in which each `--set section.field=value` is given as its flag `--section.field value`."""
    args = argparse.Namespace(**vars(args))
    settable: dict[str, tuple[configure.Leaf, bool]] = {}
    for spec in (getattr(args, configure.SPECS, None) or {}).values():
        all_leaves = configure.leaves(spec["cls"])
        for leaf in all_leaves:
            if leaf.path in spec["options"] and spec["options"][leaf.path][0].startswith("--"):
                dest = f"{spec['section']}.{leaf.path}" if spec["section"] else leaf.path
                section = any(other.path.startswith(leaf.path + ".") for other in all_leaves)  # an optional section's on/off leaf
                settable[dest] = (leaf, section)
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq:
            raise FalconError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        if key not in settable:
            close = difflib.get_close_matches(key, list(settable), n=3)
            raise FalconError(f"unknown setting {key!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        leaf, section = settable[key]
        try:
            if section and text.lower() in ("none", "null"):  # `dedup.url=none` switches a dedup method off
                value: Any = False
            else:
                value = configure.coerce(text, leaf.hint, leaf.choices)
        except ValueError as exc:
            raise FalconError(f"--set {key}: {exc}") from None
        setattr(args, key, value)
    args.set = []  # given now as their flags: a second call changes nothing
    return args


def build_config(args: argparse.Namespace) -> Any:
    """RefineConfig from its defaults, then the --config YAML, then the flags (and --set, the same flags spelled otherwise)."""
    from falconlm.data.config import RefineConfig

    return config_from_args(RefineConfig, apply_sets(args, getattr(args, "set", None) or []))


def run(args: argparse.Namespace) -> int:
    """Run the recipe and print the summary."""
    from falconlm.data.executor import ExecConfig
    from falconlm.data.refine import run_refine

    full = apply_sets(args, args.set)
    cmd = config_from_args(RefineCommand, full)
    inputs = list(cmd.inputs) + ([str(sample_path())] if cmd.sample else [])
    if not inputs:
        raise FalconError("give at least one INPUT (file, glob or directory), or --sample")
    out = cmd.out or ("out/refine-sample" if cmd.sample else None)
    if not out:
        raise FalconError("--out DIR is required")
    exec_config = config_from_args(ExecConfig, full, section="exec")
    if exec_config.workers < 1:
        raise FalconError("--workers must be at least 1")
    config = build_config(full)
    recipe = FILTER_RECIPE if args.no_dedup else cmd.recipe
    res = run_refine(inputs, out, recipe=recipe, config=config, exec_config=exec_config)
    print(res.summary())
    return 0
