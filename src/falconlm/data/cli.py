"""`falconlm refine`: raw web pages (WARC / JSONL / Parquet) -> clean, filtered text shards.

Parse the flags, fill the RefineConfig dataclass (config.py), call the runner (refine.py)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from falconlm.errors import FalconError

SAMPLE = ("sample", "sample.warc.gz")


def sample_path() -> Path:
    """The bundled sample WARC."""
    return Path(str(resources.files("falconlm.assets").joinpath(*SAMPLE)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `falconlm refine` (thresholds: --set section.field=value or --config YAML)."""
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files, globs or directories (WARC, JSONL, Parquet)")
    p.add_argument("--out", help="output directory (default with --sample: out/refine-sample)")
    p.add_argument("--sample", action="store_true", help="add the bundled sample WARC to the inputs")
    p.add_argument("--recipe", default="refinedweb", help="refinedweb (default) or refinedweb-filter")
    p.add_argument("--no-dedup", action="store_true", help="filter only (same as --recipe refinedweb-filter)")
    p.add_argument("--workers", type=int, default=1, help="parallel tasks (processes, or Ray CPUs)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="connect to this Ray cluster (default: start a local one)")
    p.add_argument("--extractor", choices=["trafilatura", "resiliparse"], default=None)
    p.add_argument("--languages", default=None, help="comma-separated ISO-639-1 codes to keep (default en)")
    p.add_argument("--limit", type=int, default=None, help="read at most N documents per input task")
    p.add_argument("--url-blocklist", default=None, metavar="DIR", help="UT1-format blocklist directory (or a file)")
    p.add_argument("--format", dest="output_format", default=None, help="jsonl.zst (default), jsonl.gz, jsonl, parquet")
    p.add_argument("--keep-dropped", action="store_true", help="also write dropped documents with their reason")
    p.add_argument("--text-key", default=None, help="text field of JSONL/Parquet inputs (default text)")
    p.add_argument("--slices-per-file", type=int, default=None, help="split each input file into N tasks (default 1)")
    p.add_argument("--config", default=None, help="YAML file filling the RefineConfig dataclass")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set quality.min_doc_words=40 --set language.min_score=0.5",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or origin is types.UnionType:
        if value.lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if typ is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if typ is int:
        return int(value)
    if typ is float:
        return float(value)
    if origin is tuple:
        import yaml

        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            parsed = [x.strip() for x in parsed.split(",") if x.strip()]
        return _to_tuple(parsed)
    return value


def _to_tuple(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuple(v) for v in x)
    return x


def apply_overrides(config: Any, items: dict[str, Any]) -> Any:
    """Set nested dataclass fields from a {"section.field": value} map (strings are coerced)."""
    for key, value in items.items():
        parts = key.split(".")
        config = _set(config, parts, value, key)
    return config


def _set(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if parts[0] not in fields:
        raise FalconError(f"unknown setting {key!r}: {type(obj).__name__} has {', '.join(fields)}")
    if len(parts) == 1:
        hints = typing.get_type_hints(type(obj))
        typ = hints[parts[0]]
        v = _coerce(value, typ) if isinstance(value, str) else _to_tuple(value)
        return dataclasses.replace(obj, **{parts[0]: v})
    child = getattr(obj, parts[0])
    if child is None:  # an optional section that is off (a dedup method): setting a field turns it on
        inner = [a for a in typing.get_args(typing.get_type_hints(type(obj))[parts[0]]) if dataclasses.is_dataclass(a)]
        child = inner[0]() if inner else None
    if not dataclasses.is_dataclass(child):
        raise FalconError(f"setting {key!r}: {parts[0]} is not a section")
    return dataclasses.replace(obj, **{parts[0]: _set(child, parts[1:], value, key)})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_config(args: argparse.Namespace) -> Any:
    """RefineConfig from --config YAML, then the dedicated flags, then --set overrides."""
    from falconlm.data.config import RefineConfig

    cfg = RefineConfig()
    if args.config:
        import yaml

        try:
            data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise FalconError(f"cannot read --config {args.config}: {exc.strerror}") from exc
        cfg = apply_overrides(cfg, _flatten(data))
    flags: dict[str, Any] = {}
    if args.extractor:
        flags["extract.extractor"] = args.extractor
    if args.languages:
        flags["language.languages"] = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if args.limit is not None:
        flags["reader.limit"] = args.limit
    if args.url_blocklist:
        flags["url.blocklist_dir"] = args.url_blocklist
    if args.output_format:
        flags["output_format"] = args.output_format
    if args.keep_dropped:
        flags["keep_dropped"] = True
    if args.text_key:
        flags["reader.text_key"] = args.text_key
    if args.slices_per_file is not None:
        flags["slices_per_file"] = args.slices_per_file
    cfg = apply_overrides(cfg, flags)
    sets = {}
    for item in args.set:
        if "=" not in item:
            raise FalconError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        k, v = item.split("=", 1)
        sets[k.strip()] = v.strip()
    return apply_overrides(cfg, sets)


def run(args: argparse.Namespace) -> int:
    """Run the recipe and print the summary."""
    from falconlm.data.executor import ExecConfig
    from falconlm.data.refine import run_refine
    from falconlm.data.writers import FORMATS

    inputs = list(args.inputs)
    if args.sample:
        inputs.append(str(sample_path()))
    if not inputs:
        raise FalconError("give at least one INPUT (file, glob or directory), or --sample")
    out = args.out or ("out/refine-sample" if args.sample else None)
    if not out:
        raise FalconError("--out DIR is required")
    if args.workers < 1:
        raise FalconError("--workers must be at least 1")
    config = build_config(args)
    if config.output_format not in FORMATS:
        raise FalconError(f"--format {config.output_format}: choose one of {', '.join(FORMATS)}")
    recipe = "refinedweb-filter" if args.no_dedup else args.recipe
    exec_config = ExecConfig(workers=args.workers, executor=args.executor, ray_address=args.ray_address, progress=not args.no_progress)
    res = run_refine(inputs, out, recipe=recipe, config=config, exec_config=exec_config)
    print(res.summary())
    return 0
