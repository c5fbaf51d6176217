"""The one runner: a recipe's stages over the inputs -> DIR/data shards + DIR/stats.json + DIR/report.html.

`falconlm refine` (recipes `refinedweb`, `refinedweb-filter`) and `falconlm dedup` (recipe `dedup`)
both run through `run_refine`: same run directory layout, same resume rules, one Ray session for
all stages of a command.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.atomic import atomic_write_json, output_dir, remove_stale_temps_tree
from falconlm.data.config import RefineConfig
from falconlm.data.executor import ExecConfig, ray_session
from falconlm.data.readers import ReaderOptions, expand_inputs
from falconlm.data.recipes import build_recipe
from falconlm.data.stage import StageContext
from falconlm.errors import FalconError


@dataclass
class RefineResult:
    """Where the outputs are, the merged statistics (what stats.json holds) and the wall time."""

    out_dir: Path
    outputs: list[Path]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """What a command prints at the end: the per-step table and where everything is."""
        from falconlm.data.readers import FileSkips
        from falconlm.data.report import summary_text

        extra = [f"note: {n}" for n in self.stats.get("notes", [])]
        skipped = [FileSkips.from_dict(f).describe() for f in self.stats.get("skipped_input", [])]
        if skipped:
            extra.append("skipped input: " + "; ".join(skipped))
        notes = "\n" + "\n".join(extra) if extra else ""
        return (f"{summary_text(self.stats)}{notes}\n\n{len(self.outputs)} shard(s) in {self.out_dir / 'data'}; "
                f"stats: {self.out_dir / 'stats.json'}; report: {self.out_dir / 'report.html'}  ({self.seconds:.1f} s)")


def _check_config(out_dir: Path, recipe: str, config: RefineConfig, inputs: list[Path]) -> None:
    """Refuse to resume a directory produced with another configuration or other inputs (changed files included: size, mtime)."""
    fp = {"recipe": recipe, "config": config.fingerprint(), "inputs": [str(p) for p in inputs],
          "input_stats": [[os.path.getsize(p), os.stat(p).st_mtime_ns] for p in inputs]}
    marker = out_dir / "run.json"
    if marker.exists():
        old = json.loads(marker.read_text(encoding="utf-8"))
        if old != fp:
            what = [k for k in ("recipe", "config", "inputs") if old.get(k) != fp[k]]
            if not what and old.get("input_stats") != fp["input_stats"]:
                changed = [Path(p).name for p, a, b in zip(inputs, old.get("input_stats") or [None] * len(inputs), fp["input_stats"]) if a != b]
                what = [f"input files changed since ({', '.join(changed)})"]
            words = {"recipe": "another recipe", "config": "another configuration", "inputs": "another input list"}
            raise FalconError(
                f"{out_dir} holds a run made with {' and '.join(words.get(w, w) for w in what)}; its finished parts would not match, "
                "so use a new --out directory (or delete it) to start over"
            )
    else:
        atomic_write_json(marker, fp)


def run_notes(config: RefineConfig, exec_config: ExecConfig, files: list[Path], recipe: str) -> list[str]:
    """What a user should know before the run: settings that silently do less than they seem to."""
    notes = []
    tasks = len(files) * max(1, config.slices_per_file)
    if exec_config.executor == "local" and exec_config.workers > tasks:
        notes.append(f"--workers {exec_config.workers} but the filter stage has {tasks} task(s), one per input file and slice; "
                     f"pass --slices-per-file {exec_config.workers} to split each file among the workers")
    if recipe != "dedup":
        skipped = config.quality.stop_word_rule_skipped(config.language.languages)
        if skipped:
            notes.append(f"the Gopher stop-word rule (quality.min_stop_words) has a list for {', '.join(config.quality.stop_words_languages)} only; "
                         f"it is skipped for documents in {', '.join(skipped)}")
    return notes


def run_refine(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    recipe: str = "refinedweb",
    config: RefineConfig | None = None,
    exec_config: ExecConfig | None = None,
    report: bool = True,
) -> RefineResult:
    """Run a recipe over the inputs into out_dir; resumable: rerun the same call after a crash."""
    config = config or RefineConfig()
    exec_config = exec_config or ExecConfig()
    files = expand_inputs(list(inputs))
    stages = build_recipe(recipe, config)
    if not stages:
        raise FalconError(f"recipe {recipe!r} has no stage with this configuration (every method is off)")
    out = Path(out_dir)
    with output_dir(out):  # a run refused at its start (other settings, no usable input) leaves no half-made directory
        _check_config(out, recipe, config, files)
        return _run(out, files, stages, recipe, config, exec_config, report)


def _run(out: Path, files: list[Path], stages: list, recipe: str, config: RefineConfig, exec_config: ExecConfig, report: bool) -> RefineResult:
    """The stages over the inputs, in an existing run directory."""
    import sys

    notes = run_notes(config, exec_config, files, recipe)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    remove_stale_temps_tree(out)  # a killed run's unfinished writes (never under a final name)
    atomic_write_json(out / "config.json", {"recipe": recipe, **config.to_dict()})
    t0 = time.monotonic()
    current: list[Path] = files
    all_stats: list[dict[str, Any]] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    skipped_input: list[dict[str, Any]] = []
    with ray_session(exec_config):  # once for every stage of the command
        for i, stage in enumerate(stages):
            # The first stage reads the user's files as configured; later ones read our own shards.
            reader = config.reader if i == 0 else ReaderOptions()
            ctx = StageContext(out, exec_config, last=i == len(stages) - 1, reader=reader)
            res = stage.run(current, ctx)
            current = list(res.outputs)
            all_stats.extend(res.stats)
            for key, items in res.examples.items():
                examples.setdefault(key, items)
            if i == 0:
                skipped_input = res.skipped_input
                _require_documents(res.stats, skipped_input, files)
    stats = {
        "recipe": recipe,
        "inputs": [str(p) for p in files],
        "input_bytes": sum(os.path.getsize(p) for p in files),
        "outputs": [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in current],
        "steps": all_stats,
        "examples": examples,
        "skipped_input": skipped_input,
        "notes": notes,
    }
    # Every task of this run has committed its outputs, so a temp name still here was written by a
    # task whose node died (Ray re-ran it elsewhere) and whose worker outlived its raylet for a while.
    remove_stale_temps_tree(out)
    # Wall time is kept out of stats.json so that a resumed run writes the same file.
    atomic_write_json(out / "stats.json", stats)
    if report:
        from falconlm.data.report import write_report

        write_report(out, stats)
    return RefineResult(out, current, stats, round(time.monotonic() - t0, 3))


def _require_documents(stats: list[dict[str, Any]], skipped_input: list[dict[str, Any]], files: list[Path]) -> None:
    """FalconError when the first stage read no document at all (empty, unreadable or wrongly keyed inputs): zeros are no result."""
    from falconlm.data.readers import FileSkips

    # The refine recipes start with "read"; dedup starts with its first dedup stage, whose input is the files.
    read = next((s for s in stats if s["name"] == "read"), None)
    if read is not None and read["docs_out"]:
        return
    if read is None and (not stats or stats[0].get("docs_in", 1)):
        return
    from falconlm.data.readers import input_format

    detail = "; ".join(FileSkips.from_dict(f).describe() for f in skipped_input) or "the files hold no records"
    keyed = any(input_format(f) in ("jsonl", "parquet") for f in files)
    hint = " (JSONL/Parquet records need a string text field: is --text-key right?)" if keyed else ""
    raise FalconError(f"no documents could be read from the {len(files)} input file(s): {detail}{hint}")
