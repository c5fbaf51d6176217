"""Run a recipe end to end: inputs -> stages -> DIR/data shards + DIR/stats.json + DIR/report.html."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.data.executor import ExecConfig
from falconlm.data.readers import expand_inputs
from falconlm.data.recipes import RefineConfig, StageContext, build_recipe
from falconlm.errors import FalconError


@dataclass
class RefineResult:
    """Where the outputs are and the merged statistics."""

    out_dir: Path
    outputs: list[Path]
    stats: dict[str, Any] = field(default_factory=dict)


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON to a temp name, then rename."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
        write_json_atomic(marker, fp)


def run_refine(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    recipe: str = "refinedweb",
    config: RefineConfig | None = None,
    exec_config: ExecConfig | None = None,
    slices_per_file: int = 1,
    report: bool = True,
) -> RefineResult:
    """Refine raw inputs into clean shards; resumable: rerun the same call after a crash."""
    config = config or RefineConfig()
    exec_config = exec_config or ExecConfig()
    files = expand_inputs(list(inputs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, recipe, config, files)
    write_json_atomic(out / "config.json", {"recipe": recipe, **config.to_dict()})
    stages = build_recipe(recipe, config)
    if slices_per_file > 1:
        for st in stages:
            if hasattr(st, "slices_per_file"):
                st.slices_per_file = slices_per_file
    t0 = time.monotonic()
    current: list[Path] = files
    all_stats: list[dict[str, Any]] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    for i, stage in enumerate(stages):
        ctx = StageContext(out_dir=out, exec=exec_config, config=config, last=i == len(stages) - 1)
        res = stage.run(current, ctx)
        current = res.outputs
        all_stats.extend(res.stats)
        for key, items in res.examples.items():
            examples.setdefault(f"{stage.name}/{key}" if not key.startswith(stage.name + "/") else key, items)
    stats = {
        "recipe": recipe,
        "inputs": [str(p) for p in files],
        "input_bytes": sum(os.path.getsize(p) for p in files),
        "outputs": [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in current],
        "steps": all_stats,
        "examples": examples,
    }
    write_json_atomic(out / "stats.json", stats)
    if report:
        from falconlm.data.report import write_report

        write_report(out, stats)
    stats_runtime = {"seconds": round(time.monotonic() - t0, 3)}
    return RefineResult(out, current, {**stats, "runtime": stats_runtime})
