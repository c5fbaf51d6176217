"""What a recipe stage is: an object with a `name` and `run(inputs, ctx) -> StageResult`.

A stage reads the previous stage's files (the run's inputs for the first one), runs its tasks
through `executor.run_stage` (so it resumes), writes its shards into `ctx.stage_dir(name)` and
returns them with one stats dict per step. The runner (refine.py) chains the stages of a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from falconlm.data.executor import ExecConfig
from falconlm.data.readers import ReaderOptions


@dataclass
class StageContext:
    """What every stage gets from the runner: the run directory, the executor, how to read its inputs."""

    out_dir: Path
    exec: ExecConfig = field(default_factory=ExecConfig)
    last: bool = False  # the final stage writes to DIR/data
    # How this stage reads its input files: the run's reader options for the first stage (the
    # user's files), the standard keys for later ones (shards this pipeline wrote).
    reader: ReaderOptions = field(default_factory=ReaderOptions)

    def stage_dir(self, name: str) -> Path:
        """Where a stage writes its shards: DIR/data for the last stage, else DIR/work/<name>."""
        return self.out_dir / "data" if self.last else self.out_dir / "work" / name

    def marker_dir(self, name: str) -> Path:
        """Completion markers of a stage's tasks."""
        return self.out_dir / "markers" / name

    def dropped_dir(self, name: str) -> Path:
        """Dropped documents (with keep_dropped)."""
        return self.out_dir / "dropped" / name


@dataclass
class StageResult:
    """What a stage hands to the next one: its output files, its per-step stats and report examples."""

    outputs: list[Path]
    stats: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped_input: list[dict[str, Any]] = field(default_factory=list)  # FileSkips.to_dict() of input files with skipped records


class RecipeStage(Protocol):
    """A stage: reads the previous stage's files, writes its own, returns stats per step."""

    name: str

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult: ...
