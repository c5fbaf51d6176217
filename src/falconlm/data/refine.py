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

from falconlm.atomic import atomic_write_json, remove_stale_temps_tree
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
        from falconlm.data.report import summary_text

        return (f"{summary_text(self.stats)}\n\n{len(self.outputs)} shard(s) in {self.out_dir / 'data'}; "
                f"stats: {self.out_dir / 'stats.json'}; report: {self.out_dir / 'report.html'}  ({self.seconds:.1f} s)")


def _check_config(out_dir: Path, recipe: str, config: RefineConfig, inputs: list[Path]) -> None:
    """Refuse to resume a directory produced with another configuration or other inputs."""
    fp = {"recipe": recipe, "config": config.fingerprint(), "inputs": [str(p) for p in inputs]}
    marker = out_dir / "run.json"
    if marker.exists():
        old = json.loads(marker.read_text(encoding="utf-8"))
        if old != fp:
            raise FalconError(
                f"{out_dir} holds a run with another recipe, configuration or input list; "
                "use a new --out directory (or delete it) to start over"
            )
    else:
        atomic_write_json(marker, fp)


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
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, recipe, config, files)
    remove_stale_temps_tree(out)  # a killed run's unfinished writes (never under a final name)
    atomic_write_json(out / "config.json", {"recipe": recipe, **config.to_dict()})
    t0 = time.monotonic()
    current: list[Path] = files
    all_stats: list[dict[str, Any]] = []
    examples: dict[str, list[dict[str, Any]]] = {}
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
    stats = {
        "recipe": recipe,
        "inputs": [str(p) for p in files],
        "input_bytes": sum(os.path.getsize(p) for p in files),
        "outputs": [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in current],
        "steps": all_stats,
        "examples": examples,
    }
    # Wall time is kept out of stats.json so that a resumed run writes the same file.
    atomic_write_json(out / "stats.json", stats)
    if report:
        from falconlm.data.report import write_report

        write_report(out, stats)
    return RefineResult(out, current, stats, round(time.monotonic() - t0, 3))
